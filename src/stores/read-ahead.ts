/**
 * Iterates `source` while fetching up to `depth` items ahead, so the next
 * etcd page is on the wire while the current one is planned and written.
 * Memory stays bounded by `depth` items.
 */
export async function* readAhead<T>(source: AsyncIterable<T>, depth = 1): AsyncGenerator<T> {
  const iterator = source[Symbol.asyncIterator]();
  const queue: Promise<IteratorResult<T>>[] = [];
  const fill = () => {
    while (queue.length <= depth) queue.push(iterator.next());
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
