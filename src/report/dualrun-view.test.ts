import { describe, expect, it } from 'vitest';
import type { DualRunStats } from '../dualrun/dualrun.js';
import { EventRate, renderDualRunStatus } from './dualrun-view.js';

const stats: DualRunStats = {
  role: 'leader', checkpoint: 90, etcdRevision: 100, caughtUpAt: 1000, seenRevision: 0, checkpointWrittenAt: 1000, connected: true, started: true, events: 500, ops: 480, txns: 40, checkpointOnlyTxns: 3,
  splitRevisions: 0, largePuts: 0, unmappable: 0, rebaselines: 0, repairs: 0, sessions: 2, sessionsRecreated: 0, errors: {}, lateWrites: {}, reverseOps: 0, guardTrips: 0, reverseRules: 1, mirrorsFailing: {},
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

  it('a leader setting up says so; held by a frozen Consul, what the watch heard is lag, as /metrics counts it', () => {
    expect(renderDualRunStatus({ ...stats, started: false }, 3500, 0, false)[0]).toBe('dual-run: leader (setting up)');
    const held = renderDualRunStatus({ ...stats, checkpoint: 100, etcdRevision: 100, seenRevision: 1_950, behindSince: 1000 }, 3500, 0, false);
    expect(held[1]).toBe('  checkpoint 100   etcd revision 1950   lag 1850 revision(s), 2.50 s (since caught up)');
  });
});

describe('renderDualRunStatus with several datacenters', () => {
  it('adds a line per datacenter: replicating, or not answering with its lag growing', () => {
    const dc = { role: 'leader' as const, etcdRevision: 100, caughtUpAt: 1000, checkpointWrittenAt: 1000, started: true, events: 0, ops: 0, txns: 7, rebaselines: 0, sessions: 1, errors: {} };
    const lines = renderDualRunStatus({ ...stats, datacenters: { dc1: { ...dc, checkpoint: 100, connected: true }, dc2: { ...dc, checkpoint: 60, connected: false } } }, 3500, 0, false);
    expect(lines.slice(-2)).toEqual([
      '  datacenter dc1: replicating   checkpoint 100   lag 0 revision(s)   txns 7   sessions 1',
      '  datacenter dc2: NOT ANSWERING (retrying)   checkpoint 60   lag 40 revision(s), 2.50 s   txns 7   sessions 1',
    ]);
  });
});

describe('metrics with several datacenters', () => {
  it('the lag gauges are of the datacenter furthest behind, counted to the revision the dual-run heard (one down for 45 s: they said 0)', async () => {
    const { DualRunMetrics, lagRevisions } = await import('../dualrun/metrics.js');
    const metrics = new DualRunMetrics({ heartbeat: false });
    const now = Date.now();
    // dc1 (the primary) is caught up; dc2's applier took revision 1,228 and stopped there 40 s ago; the watch heard 2,037.
    const dc = { role: 'leader' as const, caughtUpAt: now, checkpointWrittenAt: now, started: true, events: 0, ops: 0, txns: 0, rebaselines: 0, sessions: 0, errors: {} };
    const behind = { ...stats, checkpoint: 2_037, etcdRevision: 2_037, seenRevision: 2_037, caughtUpAt: now, checkpointWrittenAt: now,
      datacenters: { dc1: { ...dc, checkpoint: 2_037, etcdRevision: 2_037, connected: true }, dc2: { ...dc, checkpoint: 1_228, etcdRevision: 1_228, caughtUpAt: now - 40_000, connected: false } } };
    metrics.update(behind);
    expect(lagRevisions(behind)).toBe(809);
    const text = await metrics.text();
    expect(text).toMatch(/^migrate_dualrun_lag_revisions 809$/m);
    expect(Number(/^migrate_dualrun_lag_seconds (\S+)$/m.exec(text)?.[1])).toBeGreaterThanOrEqual(40);
    expect(text).toMatch(/^migrate_dualrun_datacenter_lag_revisions\{datacenter="dc2"\} 809$/m);
    expect(metrics.health().body).toMatchObject({ lagRevisions: 809, datacenters: { dc2: { lagRevisions: 809 } } });
  });

  it('exports lag, checkpoint and connected per datacenter, and /healthz is not ready while one does not answer', async () => {
    const { DualRunMetrics } = await import('../dualrun/metrics.js');
    const metrics = new DualRunMetrics({ heartbeat: false });
    const dc = { role: 'leader' as const, etcdRevision: 100, caughtUpAt: Date.now(), checkpointWrittenAt: Date.now(), started: true, events: 0, ops: 0, txns: 0, rebaselines: 0, sessions: 0, errors: {} };
    metrics.update({ ...stats, checkpoint: 100, caughtUpAt: Date.now(), checkpointWrittenAt: Date.now(), datacenters: { dc1: { ...dc, checkpoint: 100, connected: true }, dc2: { ...dc, checkpoint: 60, connected: false } } });
    const text = await metrics.text();
    expect(text).toMatch(/^migrate_dualrun_datacenter_lag_revisions\{datacenter="dc2"\} 40$/m);
    expect(text).toMatch(/^migrate_dualrun_datacenter_connected\{datacenter="dc2"\} 0$/m);
    expect(text).toMatch(/^migrate_dualrun_datacenter_checkpoint_revision\{datacenter="dc1"\} 100$/m);
    const health = metrics.health();
    expect(health.ready).toBe(false);
    expect(health.body).toMatchObject({ status: 'disconnected', datacenters: { dc2: { connected: false, lagRevisions: 40 } } });
    metrics.update({ ...stats, checkpoint: 100, caughtUpAt: Date.now(), checkpointWrittenAt: Date.now(), datacenters: { dc1: { ...dc, checkpoint: 100, connected: true }, dc2: { ...dc, checkpoint: 100, connected: true } } });
    expect(metrics.health().ready).toBe(true);
    // A datacenter whose lane is still setting up (its watch not open) is not ready either.
    metrics.update({ ...stats, checkpoint: 100, caughtUpAt: Date.now(), checkpointWrittenAt: Date.now(), datacenters: { dc1: { ...dc, checkpoint: 100, connected: true }, dc2: { ...dc, checkpoint: 100, connected: true, started: false } } });
    expect(metrics.health()).toMatchObject({ ready: false, body: { status: 'starting' } });
  });
});

describe('/healthz of a leader setting up', () => {
  it('is starting (503) until its etcd watch opens, though its checkpoint equals what it knows of etcd', async () => {
    const { DualRunMetrics } = await import('../dualrun/metrics.js');
    const metrics = new DualRunMetrics({ heartbeat: false });
    // Just took the lead: the checkpoint is read, etcd's revision not yet heard (the watch opens after the sessions are renewed).
    const setting = { ...stats, checkpoint: 4_318, etcdRevision: 0, caughtUpAt: Date.now(), checkpointWrittenAt: Date.now(), connected: true, started: false };
    metrics.update(setting);
    expect(metrics.health()).toMatchObject({ ready: false, body: { status: 'starting', role: 'leader', checkpoint: 4_318 } });
    // Set up longer than twice the heartbeat (Consul frozen): stalled, as any leader writing no checkpoint.
    metrics.update({ ...setting, checkpointWrittenAt: Date.now() - 21_000 });
    expect(metrics.health()).toMatchObject({ ready: false, body: { status: 'stalled' } });
    // The watch is open, etcd's answer (its first progress notification) not in yet: the lag is unknown, not 0.
    metrics.update({ ...setting, started: true });
    expect(metrics.health()).toMatchObject({ ready: false, body: { status: 'starting', etcdRevision: 0 } });
    metrics.update({ ...setting, etcdRevision: 4_318, started: true });
    expect(metrics.health()).toMatchObject({ ready: true, body: { status: 'ready' } });
  });
});

describe('/healthz of a leader whose servers stopped answering', () => {
  it('is stalled (503) once no checkpoint was written for twice the heartbeat, though nothing reports an error or a lag', async () => {
    const { DualRunMetrics } = await import('../dualrun/metrics.js');
    const metrics = new DualRunMetrics({ heartbeat: false });
    // Caught up as far as it knows: etcd (or Consul) froze, so no news and no error.
    const frozen = { ...stats, checkpoint: 100, etcdRevision: 100, caughtUpAt: Date.now(), connected: true };
    metrics.update({ ...frozen, checkpointWrittenAt: Date.now() - 19_000 });
    expect(metrics.health()).toMatchObject({ ready: true, body: { status: 'ready', lagSeconds: 0 } });
    metrics.update({ ...frozen, checkpointWrittenAt: Date.now() - 21_000 });
    expect(metrics.health()).toMatchObject({ ready: false, body: { status: 'stalled', lagSeconds: 0, checkpointAgeSeconds: 21 } });
    // A frozen etcd makes no lag to see: the checkpoint's age is the gauge an alert can watch.
    expect(Number(/^migrate_dualrun_checkpoint_age_seconds (\S+)$/m.exec(await metrics.text())?.[1])).toBeGreaterThanOrEqual(21);
    // A standby writes no checkpoint: it is ready while Consul answers it, and reports no lag of its own
    // (a former leader's old checkpoint would make its lag grow for ever).
    metrics.update({ ...frozen, role: 'standby', checkpoint: 40, caughtUpAt: Date.now() - 120_000, checkpointWrittenAt: 0 });
    expect(metrics.health()).toEqual({ ready: true, body: { status: 'ready', role: 'standby' } });
    const text = await metrics.text();
    expect(text).toMatch(/^migrate_dualrun_lag_seconds 0$/m);
    expect(text).toMatch(/^migrate_dualrun_lag_revisions 0$/m);
    expect(text).toMatch(/^migrate_dualrun_checkpoint_revision 0$/m);
    expect(text).toMatch(/^migrate_dualrun_checkpoint_age_seconds 0$/m);
    expect(text).toMatch(/^migrate_dualrun_etcd_revision 0$/m);
    metrics.update({ ...frozen, role: 'standby', connected: false, checkpointWrittenAt: 0 });
    expect(metrics.health()).toEqual({ ready: false, body: { status: 'disconnected', role: 'standby' } });
  });

  it('a leader whose reverse mirror has failed for 10 s is not ready (mirror-failing, the rules named); one that failed a moment ago, or passes again, is', async () => {
    const { DualRunMetrics } = await import('../dualrun/metrics.js');
    const metrics = new DualRunMetrics({ heartbeat: false });
    const caughtUp = { ...stats, checkpoint: 100, etcdRevision: 100, caughtUpAt: Date.now(), checkpointWrittenAt: Date.now() };
    metrics.update({ ...caughtUp, mirrorsFailing: { config: Date.now() - 12_000, jobs: Date.now() - 1_000 } });
    expect(metrics.health()).toMatchObject({ ready: false, body: { status: 'mirror-failing', mirrorsFailing: ['config'] } });
    metrics.update({ ...caughtUp, mirrorsFailing: { jobs: Date.now() - 1_000 } });
    expect(metrics.health()).toMatchObject({ ready: true, body: { status: 'ready' } });
    expect(metrics.health().body).not.toHaveProperty('mirrorsFailing');
  });

  it('a leader held by a frozen Consul: what the watch heard and the applier has not taken is lag, in revisions and seconds', async () => {
    const { DualRunMetrics } = await import('../dualrun/metrics.js');
    const metrics = new DualRunMetrics({ heartbeat: false });
    // The applier took revision 100 and applied it; the watch has heard etcd at 1,950 since, queued for 15 s.
    const held = { ...stats, checkpoint: 100, etcdRevision: 100, caughtUpAt: Date.now() - 15_000, seenRevision: 1_950, behindSince: Date.now() - 15_000, connected: true, checkpointWrittenAt: Date.now() - 15_000 };
    metrics.update(held);
    const health = metrics.health();
    expect(health).toMatchObject({ ready: false, body: { status: 'catching-up', etcdRevision: 1_950, lagRevisions: 1_850 } });
    expect(health.body.lagSeconds).toBeGreaterThanOrEqual(15);
    const text = await metrics.text();
    expect(text).toMatch(/^migrate_dualrun_lag_revisions 1850$/m);
    expect(text).toMatch(/^migrate_dualrun_etcd_revision 1950$/m);
    expect(Number(/^migrate_dualrun_lag_seconds (\S+)$/m.exec(text)?.[1])).toBeGreaterThanOrEqual(15);
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
