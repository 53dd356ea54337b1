import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import type { DualRunStats } from './dualrun.js';
import { DualRunMetrics, STANDBY_SILENT_MS } from './metrics.js';

describe('dualrun --metrics-addr', () => {
  it('an address it cannot serve is a usage error (exit 2), not an internal error', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', () => resolve()));
    const port = (taken.address() as { port: number }).port;
    try {
      const cases: [string, RegExp][] = [
        [':99999', /^--metrics-addr :99999 is not host:port or :port \(a port from 0 to 65535\)/],
        ['nonsense', /^--metrics-addr nonsense is not host:port/],
        [`127.0.0.1:${port}`, new RegExp(`^--metrics-addr 127\\.0\\.0\\.1:${port}: cannot listen there: the port is in use`)],
      ];
      for (const [address, message] of cases) {
        const metrics = new DualRunMetrics();
        await expect(metrics.listen(address), address).rejects.toMatchObject({ exitCode: 2, message: expect.stringMatching(message) });
        await metrics.close();
      }
    } finally {
      taken.close();
    }
  });

  it('the README names every metric the dual-run exports', async () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const metrics = new DualRunMetrics({ heartbeat: true });
    const names = (await metrics.registry.getMetricsAsJSON()).map((m) => m.name);
    expect(names.length).toBeGreaterThan(20);
    expect(names.filter((name) => !readme.includes(`\`${name}`))).toEqual([]);
    await metrics.close();
  });

  it('a standby is ready while Consul answers it, and not once Consul has been silent for 10 s (a black hole fails no request for a minute)', () => {
    const standby: DualRunStats = {
      role: 'standby', checkpoint: 0, etcdRevision: 0, caughtUpAt: 0, seenRevision: 0, checkpointWrittenAt: 0, connected: true, started: false, events: 0, ops: 0, txns: 0, checkpointOnlyTxns: 0,
      splitRevisions: 0, largePuts: 0, unmappable: 0, rebaselines: 0, repairs: 0, sessions: 0, sessionsRecreated: 0, errors: {}, lateWrites: {}, reverseOps: 0, guardTrips: 0, reverseRules: 0, mirrorsFailing: {},
    };
    const metrics = new DualRunMetrics();
    metrics.update({ ...standby, consulAnsweredAt: Date.now() - 2_000 });
    expect(metrics.health()).toEqual({ ready: true, body: { status: 'ready', role: 'standby' } });
    metrics.update({ ...standby, consulAnsweredAt: Date.now() - STANDBY_SILENT_MS - 1_000 });
    expect(metrics.health()).toEqual({ ready: false, body: { status: 'disconnected', role: 'standby' } });
    metrics.update({ ...standby, connected: false });
    expect(metrics.health()).toEqual({ ready: false, body: { status: 'disconnected', role: 'standby' } });
  });

  it('serves /healthz on a free port', async () => {
    const metrics = new DualRunMetrics();
    const bound = await metrics.listen('127.0.0.1:0');
    try {
      expect((await fetch(`http://${bound}/healthz`)).status).toBe(503);
    } finally {
      await metrics.close();
    }
  });
});
