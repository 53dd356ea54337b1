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

function watchOn(stream: ReturnType<typeof fakeStream>, progress = { answered: true }, answers = () => Promise.resolve(false)) {
  const dead = vi.fn();
  const watch = new EtcdWatch(stream as never, { start: Buffer.from('/a/'), end: Buffer.from('/a0') }, 1, (err) => err as Error, { progress, dead, answers });
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
      await vi.advanceTimersByTimeAsync(1_000);
      watch.requestProgress();
    }
    // etcd did not answer a status request either.
    await vi.advanceTimersByTimeAsync(0);
    expect(dead).toHaveBeenCalledOnce();
    const it = watch[Symbol.asyncIterator]();
    await expect(it.next()).rejects.toMatchObject({ code: 'etcd_unreachable', message: expect.stringMatching(/answered nothing for 3\d s though progress was asked every second/) });
  });

  it('is not, while etcd answers a status request: it is busy on the watch (a revision of many keys), and a watch opened again would start that over; at 10 minutes it is', async () => {
    vi.useFakeTimers();
    const stream = fakeStream();
    const answers = vi.fn(() => Promise.resolve(true));
    const { watch, dead } = watchOn(stream, { answered: true }, answers);
    stream.emit('data', { created: true, header: { revision: '5' }, events: [] });
    for (let s = 0; s < 120; s++) {
      await vi.advanceTimersByTimeAsync(1_000);
      watch.requestProgress();
    }
    expect(dead).not.toHaveBeenCalled();
    expect(answers).toHaveBeenCalled();
    // The revision arrives: the watch goes on.
    stream.emit('data', { header: { revision: '6' }, events: [{ type: 'Delete', kv: { key: Buffer.from('/a/k'), value: Buffer.alloc(0), mod_revision: '6', create_revision: '0', version: '0', lease: '0' } }] });
    const it = watch[Symbol.asyncIterator]();
    expect(await it.next()).toMatchObject({ value: { kind: 'revision', revision: 6 } });
    // Silent again, etcd answering: taken for dead after 10 minutes of nothing on the watch.
    for (let s = 0; s < 601; s++) {
      await vi.advanceTimersByTimeAsync(1_000);
      watch.requestProgress();
    }
    expect(dead).toHaveBeenCalledOnce();
    await expect(it.next()).rejects.toMatchObject({ code: 'etcd_unreachable' });
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
