import { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { EtcdWatch } from './etcd.js';

/** A watch stream that records what is written to it and answers only when told. */
function fakeStream() {
  const stream = Object.assign(new EventEmitter(), {
    written: [] as unknown[],
    write: (request: unknown) => (stream.written.push(request), true),
    pause: () => undefined,
    resume: () => undefined,
    end: () => undefined,
  });
  return stream;
}

function watchOn(stream: ReturnType<typeof fakeStream>, progress = { answered: true }) {
  const dead = vi.fn();
  const watch = new EtcdWatch(stream as never, { start: Buffer.from('/a/'), end: Buffer.from('/a0') }, 1, (err) => err as Error, { progress, dead });
  return { watch, dead };
}

afterEach(() => vi.useRealTimers());

describe('EtcdWatch: a connection gone silent', () => {
  it('is taken for dead once etcd answers nothing for 30 s while progress is asked every second', async () => {
    vi.useFakeTimers();
    const stream = fakeStream();
    const { watch, dead } = watchOn(stream);
    stream.emit('data', { created: true, header: { revision: '5' }, events: [] });
    for (let s = 0; s < 31; s++) {
      vi.advanceTimersByTime(1_000);
      watch.requestProgress();
    }
    expect(dead).toHaveBeenCalledOnce();
    const it = watch[Symbol.asyncIterator]();
    await expect(it.next()).rejects.toMatchObject({ code: 'etcd_unreachable', message: expect.stringMatching(/answered nothing for 3\d s though progress was asked every second/) });
  });

  it('is not, when this process did not run meanwhile (SIGSTOP, a paused VM): silence counts from when it asks again', () => {
    vi.useFakeTimers();
    const stream = fakeStream();
    const { watch, dead } = watchOn(stream);
    stream.emit('data', { created: true, header: { revision: '5' }, events: [] });
    vi.advanceTimersByTime(40_000);
    watch.requestProgress();
    for (let s = 0; s < 10; s++) {
      vi.advanceTimersByTime(1_000);
      watch.requestProgress();
    }
    expect(dead).not.toHaveBeenCalled();
    expect(stream.written.filter((r) => (r as { progress_request?: unknown }).progress_request)).toHaveLength(11);
  });

  it('is not, on an etcd that never answered a progress request (older than 3.4: an idle range stays silent), once it confirmed the watch', () => {
    vi.useFakeTimers();
    const stream = fakeStream();
    const { watch, dead } = watchOn(stream, { answered: false });
    stream.emit('data', { created: true, header: { revision: '5' }, events: [] });
    for (let s = 0; s < 60; s++) {
      vi.advanceTimersByTime(1_000);
      watch.requestProgress();
    }
    expect(dead).not.toHaveBeenCalled();
  });
});
