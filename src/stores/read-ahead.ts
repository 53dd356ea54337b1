/**
 * Iterates `source` while fetching up to `depth` items ahead, so the next
 * etcd page is on the wire while the current one is planned and written.
 * Memory stays bounded by `depth` items.
 */
export async function* readAhead<T>(source: AsyncIterable<T>, depth = 1): AsyncGenerator<T> {
  const iterator = source[Symbol.asyncIterator]();
  const queue: Promise<IteratorResult<T>>[] = [];
  const fill = () => {
    while (queue.length <= depth) {
      const next = iterator.next();
      // A read ahead may fail while the consumer is still busy with an earlier item; the
      // failure is rethrown when its turn comes, and must not count as unhandled meanwhile.
      next.catch(() => undefined);
      queue.push(next);
    }
  };
  try {
    fill();
    for (;;) {
      const next = await queue.shift()!;
      if (next.done) return;
      fill();
      yield next.value;
    }
  } finally {
    // Settle what was requested ahead before closing the source.
    await Promise.allSettled(queue);
    await iterator.return?.();
  }
}
