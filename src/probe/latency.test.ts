import { describe, expect, it } from 'vitest';
import { buildReport, summarize } from './latency.js';
import { renderLatencyMarkdown, renderLatencyText } from './render.js';

describe('summarize', () => {
  it('takes nearest-rank percentiles', () => {
    const values = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(summarize(values)).toEqual({ samples: 100, p50Ms: 50, p99Ms: 99, maxMs: 100, meanMs: 50.5 });
    expect(summarize([7])).toEqual({ samples: 1, p50Ms: 7, p99Ms: 7, maxMs: 7, meanMs: 7 });
    expect(summarize([3, 1, 2])).toMatchObject({ p50Ms: 2, p99Ms: 3, maxMs: 3 });
  });

  it('reports zeros for no samples instead of NaN', () => {
    expect(summarize([])).toEqual({ samples: 0, p50Ms: 0, p99Ms: 0, maxMs: 0, meanMs: 0 });
  });
});

describe('latency report', () => {
  const report = buildReport({ samples: 4, intervalMs: 10, waitSeconds: 60 }, { etcdNotify: [1, 2, 3, 4], etcdWrite: [1, 1, 1, 1], consulNotify: [5, 6, 7, 40], consulWrite: [2, 2, 2, 2], emptyWakeups: 3 });

  it('subtracts etcd from Consul', () => {
    expect(report.difference).toEqual({ p50Ms: 4, p99Ms: 36, maxMs: 36 });
    expect(report.consul.emptyWakeups).toBe(3);
  });

  it('renders both sides, the difference and the empty wake-ups', () => {
    const text = renderLatencyText(report);
    expect(text).toMatch(/etcd watch\s+2\.00 ms\s+4\.00 ms/);
    expect(text).toMatch(/Consul blocking query\s+6\.00 ms\s+40\.0 ms/);
    expect(text).toContain('+4.00 ms');
    expect(text).toContain('woke 3 time(s)');
    const markdown = renderLatencyMarkdown(report);
    expect(markdown).toContain('| Consul − etcd | +4.00 ms | +36.0 ms | +36.0 ms | | |');
    expect(markdown).toContain('### What this means');
  });
});
