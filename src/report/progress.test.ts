import { describe, expect, it } from 'vitest';
import { createProgressView, plainProgressLine } from './progress.js';

describe('plainProgressLine', () => {
  const startedAt = 1_000_000;
  it('gives the bytes of work that counts them (copy)', () => {
    const line = plainProgressLine({ title: 'copying', items: [{ name: 'a', total: 400, done: 100, bytes: 3 * 1048576 }, { name: 'b', total: 100, done: 100, bytes: 1048576 }], retries: 2, startedAt }, startedAt + 2_000);
    expect(line).toBe('copying: 200/500 keys, 4.0 MiB, 100 keys/s, ETA 3s, 2 retries');
  });

  it('leaves bytes out of work that does not count them (audit, plan, verify), instead of saying 0.0 MiB', () => {
    const line = plainProgressLine({ title: 'auditing', items: [{ name: 'keys', total: 500, done: 250 }], retries: 0, startedAt }, startedAt + 5_000);
    expect(line).toBe('auditing: 250/500 keys, 50 keys/s, ETA 5s');
  });

  it('gives no ETA from the first page of a long run (its rate counts the set-up): not before 3 s, or a twentieth done', () => {
    const items = (done: number) => [{ name: 'keys', total: 500_000, done }];
    expect(plainProgressLine({ title: 'auditing', items: items(500), retries: 0, startedAt }, startedAt + 800)).toBe('auditing: 500/500000 keys, 625 keys/s, ETA ?');
    expect(plainProgressLine({ title: 'auditing', items: items(30_000), retries: 0, startedAt }, startedAt + 3_000)).toBe('auditing: 30000/500000 keys, 10000 keys/s, ETA 47s');
    expect(plainProgressLine({ title: 'auditing', items: items(25_000), retries: 0, startedAt }, startedAt + 1_000)).toBe('auditing: 25000/500000 keys, 25000 keys/s, ETA 19s');
  });

  it('before anything is counted (verify waiting for the dual-run), the title alone', () => {
    expect(plainProgressLine({ title: 'waiting for the dual-run checkpoint (90) to reach etcd revision 100', items: [], retries: 0, startedAt }, startedAt + 5_000)).toBe('waiting for the dual-run checkpoint (90) to reach etcd revision 100');
  });
});

describe('createProgressView with plain lines', () => {
  it('does not repeat the last line when the work ends where it was last said', async () => {
    const lines: string[] = [];
    const ctx = { progress: 'auto', interactive: false, io: { env: {} }, log: (l: string) => lines.push(l), warn: () => undefined } as unknown as Parameters<typeof createProgressView>[0];
    const view = createProgressView(ctx);
    const state = { title: 'auditing', items: [{ name: 'keys', total: 300, done: 300 }], retries: 0, startedAt: Date.now() };
    view.update(state);
    await view.close();
    expect(lines).toHaveLength(1);
    // Moved on after the last line (throttled): the closing line says where it ended.
    const moved = createProgressView(ctx);
    const other = { title: 'copying', items: [{ name: 'a', total: 300, done: 100 }], retries: 0, startedAt: Date.now() };
    moved.update(other);
    other.items[0]!.done = 300;
    moved.update(other);
    await moved.close();
    expect(lines.slice(1).map((l) => l.split(',')[0])).toEqual(['copying: 100/300 keys', 'copying: 300/300 keys']);
  });
});

describe('createProgressView with --progress json', () => {
  it('ends with an event of where the work ended, not the last throttled one', async () => {
    const events: Record<string, unknown>[] = [];
    const ctx = { progress: 'json', event: (e: Record<string, unknown>) => events.push(e) } as unknown as Parameters<typeof createProgressView>[0];
    const view = createProgressView(ctx);
    const state = { title: 'copying', items: [{ name: 'a', total: 300, done: 0 }], retries: 0, startedAt: Date.now() };
    for (const done of [100, 200, 300]) {
      state.items[0]!.done = done;
      view.update(state);
    }
    expect(events.map((e) => e.done)).toEqual([100]);
    await view.close();
    expect(events.map((e) => e.done)).toEqual([100, 300]);
    await view.close();
    expect(events).toHaveLength(2);
  });

  it('carries the ETA the plain line shows: null until the rate can tell, then seconds', () => {
    const events: Record<string, unknown>[] = [];
    const ctx = { progress: 'json', event: (e: Record<string, unknown>) => events.push(e) } as unknown as Parameters<typeof createProgressView>[0];
    const view = createProgressView(ctx);
    view.update({ title: 'copying', items: [{ name: 'a', total: 100_000, done: 10 }], retries: 0, startedAt: Date.now() });
    expect(events[0]).toMatchObject({ done: 10, etaSeconds: null });
    const later = createProgressView(ctx);
    // 25,000 of 100,000 keys in 10 s: 75,000 left at 2,500 keys/s.
    later.update({ title: 'copying', items: [{ name: 'a', total: 100_000, done: 25_000 }], retries: 0, startedAt: Date.now() - 10_000 });
    expect(events[1]).toMatchObject({ done: 25_000, keysPerSecond: 2500 });
    // Rounded up, and the clock moved a little since startedAt.
    expect(events[1]!.etaSeconds).toBeGreaterThanOrEqual(30);
    expect(events[1]!.etaSeconds).toBeLessThanOrEqual(31);
  });
});
