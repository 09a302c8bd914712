/*
 * faulty_port: vCPU 0 writes to a port no device claims, for the VMM's error
 * path (expected: `ivyvm run` names the port and exits 4). Done at CPL3 like
 * all guest work, so it also shows that the TSS I/O bitmap lets any port
 * through: had it not, this would be a #GP and the runtime's exception report
 * with status 1 instead. Knob: -DFAULTY_PORT=0x....
 */
#include "rt.h"

#ifndef FAULTY_PORT
#define FAULTY_PORT 0x1234
#endif

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ncpus, (void)ram;
    if (cpu != 0)
        return 0;
    rt_printf("faulty_port: vCPU 0 writes to unassigned port 0x%x\n", FAULTY_PORT);
    rt_outb(FAULTY_PORT, 0x5a);
    rt_puts("FAIL faulty_port: the write to an unassigned port returned\n");
    rt_exit(1);
}
