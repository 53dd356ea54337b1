import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { DualRunMetrics } from './metrics.js';

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
