import { describe, expect, it } from 'vitest';
import { LagHeartbeat, heartbeatLagSeconds } from './lag-heartbeat.js';

describe('LagHeartbeat', () => {
  it('measures from the put to the commit of the first checkpoint at or past its revision', async () => {
    let now = 1000;
    let revision = 10;
    const writes: string[] = [];
    const beat = new LagHeartbeat(Buffer.from('/hb'), { applyTxn: async (ops) => (writes.push(ops[0]!.key.toString()), ++revision) }, () => now);
    expect(heartbeatLagSeconds(beat.lag(), now)).toBeUndefined();
    expect(await beat.beat()).toBe(11);
    expect(writes).toEqual(['/hb']);
    expect(beat.waiting(10)).toBe(false);
    expect(beat.waiting(11)).toBe(true);
    now = 1300;
    beat.committed(10);
    expect(heartbeatLagSeconds(beat.lag(), now)).toBeCloseTo(0.3);
    now = 1400;
    beat.committed(12);
    expect(heartbeatLagSeconds(beat.lag(), now)).toBeCloseTo(0.4);
    expect(beat.waiting(100)).toBe(false);
  });

  it('a heartbeat still waiting longer than the last measurement dates the lag (a stalled dual-run shows it growing)', async () => {
    let now = 0;
    let revision = 0;
    const beat = new LagHeartbeat(Buffer.from('/hb'), { applyTxn: async () => ++revision }, () => now);
    await beat.beat();
    now = 200;
    beat.committed(1);
    now = 1000;
    await beat.beat();
    now = 1100;
    expect(heartbeatLagSeconds(beat.lag(), now)).toBeCloseTo(0.2);
    now = 6000;
    expect(heartbeatLagSeconds(beat.lag(), now)).toBeCloseTo(5);
  });
});
