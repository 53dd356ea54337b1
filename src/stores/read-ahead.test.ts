import { describe, expect, it } from 'vitest';
import { readAhead } from './read-ahead.js';

describe('readAhead', () => {
  it('yields every item in order and fetches the next one while the consumer works', async () => {
    const started: number[] = [];
    async function* pages() {
      for (let i = 0; i < 5; i++) {
        started.push(i);
        await new Promise((r) => setTimeout(r, 5));
        yield i;
      }
    }
    const seen: number[] = [];
    for await (const page of readAhead(pages(), 1)) {
      // While page 0 is handled, page 1 is already being read.
      if (page === 0) {
        await new Promise((r) => setTimeout(r, 20));
        expect(started).toContain(1);
      }
      seen.push(page);
    }
    expect(seen).toEqual([0, 1, 2, 3, 4]);
  });

  it('a read ahead that fails while the consumer is busy is not an unhandled rejection; it surfaces in turn', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const source: AsyncIterable<number> = {
        [Symbol.asyncIterator]() {
          let i = 0;
          return { next: () => (i++ === 0 ? Promise.resolve({ done: false, value: 1 }) : Promise.reject(new Error('connection reset'))) };
        },
      };
      const seen: number[] = [];
      await expect((async () => {
        for await (const item of readAhead(source, 1)) {
          seen.push(item);
          await new Promise((r) => setTimeout(r, 20));
        }
      })()).rejects.toThrow('connection reset');
      expect(seen).toEqual([1]);
      await new Promise((r) => setTimeout(r, 10));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('passes a failure of the source on', async () => {
    async function* failing() {
      yield 1;
      throw new Error('etcd went away');
    }
    const seen: number[] = [];
    await expect((async () => {
      for await (const v of readAhead(failing(), 2)) seen.push(v);
    })()).rejects.toThrow('etcd went away');
    expect(seen).toEqual([1]);
  });
});
