#include "rt.h"
#define EPISODES 3000
static rt_page_u64 arrivals;
static rt_page_u64 errors;
int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    for (uint64_t e = 0; e < EPISODES; e++) {
        rt_atomic_add(&arrivals.v, 1);
        rt_barrier();
        if (rt_atomic_load(&arrivals.v) != (e + 1) * ncpus) rt_atomic_add(&errors.v, 1);
        rt_barrier();
    }
    if (cpu) return 0;
    rt_printf("%s zz_bar: episodes=%u errors=%lu\n", errors.v ? "FAIL" : "PASS", EPISODES, errors.v);
    rt_exit(errors.v != 0);
}
