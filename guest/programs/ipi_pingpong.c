/*
 * ipi_pingpong: vCPU 0 and vCPU ncpus-1 (the first and last node when the
 * guest spans several) bounce an interrupt: vCPU 0 sends, the peer waits for
 * it and answers, vCPU 0 waits for the answer, N times. Both wait with
 *     while (count < expected) out 0xf7
 * which must neither lose a wake-up nor spin. Each side's handler counts
 * deliveries; afterwards both counts must be exactly N and no other vector
 * may have arrived. With 1 vCPU, vCPU 0 is its own peer: it interrupts
 * itself N times. The other vCPUs park at once, so they do not compete for
 * host CPUs with the two that are timed.
 *
 * Knob: -DPINGPONG_ROUNDS=N (default 200).
 * Verdict: "PASS ipi_pingpong: vcpus=V peer=P rounds=N cycles=C cycles_per_round=R".
 */
#include "rt.h"

#ifndef PINGPONG_ROUNDS
#define PINGPONG_ROUNDS 200
#endif
#define VECTOR 0x40

static void wait_for(unsigned cpu, uint64_t expected)
{
    while (rt_irq_count(cpu, VECTOR) < expected)
        rt_wait_irq();
}

static rt_page_u64 elapsed;

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    unsigned peer = ncpus - 1;
    rt_barrier();
    if (cpu == 0) {
        uint64_t t0 = rt_rdtsc();
        for (uint64_t i = 1; i <= PINGPONG_ROUNDS; i++) {
            rt_send_ipi(peer, VECTOR);
            wait_for(0, i);
        }
        elapsed.v = rt_rdtsc() - t0;
    } else if (cpu == peer) {
        for (uint64_t i = 1; i <= PINGPONG_ROUNDS; i++) {
            wait_for(peer, i);
            rt_send_ipi(0, VECTOR);
        }
    }
    if (cpu != 0)
        return 0;
    /* No closing barrier needed: the peer counted its N-th interrupt before
     * sending the N-th answer, which vCPU 0 has now received. */

    uint64_t got0 = rt_irq_count(0, VECTOR), gotp = rt_irq_count(peer, VECTOR);
    uint64_t total0 = rt_irq_total(0), totalp = rt_irq_total(peer);
    if (got0 != PINGPONG_ROUNDS || gotp != PINGPONG_ROUNDS || total0 != got0 || totalp != gotp) {
        rt_printf("FAIL ipi_pingpong: vCPU 0 got %lu (all vectors %lu), vCPU %u got %lu (all vectors %lu), want %u each\n",
                  (unsigned long)got0, (unsigned long)total0, peer, (unsigned long)gotp,
                  (unsigned long)totalp, PINGPONG_ROUNDS);
        rt_exit(1);
    }
    rt_printf("PASS ipi_pingpong: vcpus=%u peer=%u rounds=%u cycles=%lu cycles_per_round=%lu\n",
              ncpus, peer, PINGPONG_ROUNDS, (unsigned long)elapsed.v,
              (unsigned long)(elapsed.v / PINGPONG_ROUNDS));
    rt_exit(0);
}
