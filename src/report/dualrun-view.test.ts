import { describe, expect, it } from 'vitest';
import type { DualRunStats } from '../dualrun/dualrun.js';
import { EventRate, renderDualRunStatus } from './dualrun-view.js';

const stats: DualRunStats = {
  role: 'leader', checkpoint: 90, etcdRevision: 100, caughtUpAt: 1000, connected: true, events: 500, ops: 480, txns: 40, checkpointOnlyTxns: 3,
  splitRevisions: 0, largePuts: 0, rebaselines: 0, repairs: 0, sessions: 2, errors: {}, lateWrites: {}, reverseOps: 0, guardTrips: 0, reverseRules: 1,
};

describe('renderDualRunStatus', () => {
  it('shows role, checkpoint, etcd revision, lag in revisions and seconds, rates and counters', () => {
    const lines = renderDualRunStatus(stats, 3500, 120.4, false);
    expect(lines[0]).toBe('dual-run: leader');
    expect(lines[1]).toBe('  checkpoint 90   etcd revision 100   lag 10 revision(s), 2.50 s (since caught up)');
    expect(lines[2]).toBe('  events 500 (120/s)   txns 40   ops 480   sessions 2');
    expect(lines[3]).toBe('  reverse-mirrored rules 1   late writes 0   errors 0');
    expect(lines).toHaveLength(4);
  });

  it('with a heartbeat, the end-to-end lag; late writes and errors by rule and kind; guard trips when there are any', () => {
    const lines = renderDualRunStatus({ ...stats, heartbeat: { measuredSeconds: 0.25 }, lateWrites: { app: 2 }, errors: { etcd_unreachable: 3 }, guardTrips: 1 }, 3500, 0, true);
    expect(lines[1]).toContain('0.25 s (heartbeat, end to end)');
    expect(lines[3]).toBe('  reverse-mirrored rules 1   late writes 2 (app: 2)   errors 3 (etcd_unreachable: 3)');
    expect(lines[4]).toContain('delete-guard trips 1');
    expect(renderDualRunStatus({ ...stats, role: 'standby' }, 0, 0, false)[0]).toBe('dual-run: standby (waiting for the leader lock)');
  });
});

describe('EventRate', () => {
  it('is events over the sampled window', () => {
    const rate = new EventRate(5000);
    rate.add(0, 0);
    rate.add(1000, 100);
    rate.add(2000, 300);
    expect(rate.perSecond()).toBe(150);
    rate.add(10_000, 300);
    expect(rate.perSecond()).toBe(0);
  });
});
