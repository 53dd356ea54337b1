/**
 * Bounded aggregation structures for the streaming audit: histograms with
 * fixed buckets and top-N heaps. Their memory depends on their configuration,
 * never on the size of the keyspace.
 */

/** One bucket of a histogram: values `<= le` (and above the previous bucket's `le`). */
export interface HistogramBucket {
  /** Inclusive upper bound; `null` for the last, open-ended bucket. */
  le: number | null;
  count: number;
}

/** A fixed-bucket histogram. */
export class Histogram {
  private readonly counts: number[];

  /** `bounds` are inclusive upper bounds in ascending order; an open bucket follows the last one. */
  constructor(private readonly bounds: readonly number[]) {
    this.counts = new Array<number>(bounds.length + 1).fill(0);
  }

  add(value: number, times = 1): void {
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    this.counts[i]! += times;
  }

  merge(other: Histogram): void {
    for (let i = 0; i < this.counts.length; i++) this.counts[i]! += other.counts[i] ?? 0;
  }

  get total(): number {
    return this.counts.reduce((a, b) => a + b, 0);
  }

  buckets(): HistogramBucket[] {
    return this.counts.map((count, i) => ({ le: i < this.bounds.length ? this.bounds[i]! : null, count }));
  }
}

/** Value sizes in bytes: around Consul's limits (≈390 KB is the largest value a txn can carry, 512 KiB the KV limit). */
export const VALUE_SIZE_BOUNDS = [0, 64, 256, 1024, 4096, 16384, 65536, 262144, 393216, 524288] as const;
/** Per-key `version` (number of writes since creation). */
export const VERSION_BOUNDS = [1, 10, 100, 1000, 10000] as const;
/** Revisions since a key last changed, relative to the audited revision. */
export const AGE_BOUNDS = [10, 100, 1000, 10000, 100000, 1000000] as const;
/** Lease TTLs in seconds: Consul's session range is 10 s to 24 h. */
export const TTL_BOUNDS = [9, 30, 300, 3600, 86400] as const;
/** Keys per lease. */
export const KEYS_PER_LEASE_BOUNDS = [1, 2, 10, 100, 1000] as const;
/** Ops per revision group, around Consul's 64 (before 1.14) and 128 (from 1.14) op limits. */
export const GROUP_OPS_BOUNDS = [1, 8, 32, 64, 128, 512] as const;

/**
 * The `n` items with the highest score. `add` takes the score first and a
 * factory for the item, so the (possibly allocating) item is built only when
 * it enters the heap.
 */
export class TopN<T> {
  private readonly scores: number[] = [];
  private readonly items: T[] = [];

  constructor(readonly n: number) {}

  /** Whether an item of this score would enter the heap. */
  accepts(score: number): boolean {
    return this.n > 0 && (this.scores.length < this.n || score > this.scores[0]!);
  }

  add(score: number, make: () => T): void {
    if (!this.accepts(score)) return;
    const item = make();
    if (this.scores.length < this.n) {
      this.scores.push(score);
      this.items.push(item);
      this.siftUp(this.scores.length - 1);
    } else {
      this.scores[0] = score;
      this.items[0] = item;
      this.siftDown(0);
    }
  }

  /** The retained items, highest score first (ties keep no particular order). */
  sorted(): { score: number; item: T }[] {
    return this.scores.map((score, i) => ({ score, item: this.items[i]! })).sort((a, b) => b.score - a.score);
  }

  get size(): number {
    return this.scores.length;
  }

  private swap(i: number, j: number): void {
    [this.scores[i], this.scores[j]] = [this.scores[j]!, this.scores[i]!];
    [this.items[i], this.items[j]] = [this.items[j]!, this.items[i]!];
  }

  private siftUp(i: number): void {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.scores[parent]! <= this.scores[i]!) return;
      this.swap(i, parent);
      i = parent;
    }
  }

  private siftDown(i: number): void {
    const n = this.scores.length;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let min = i;
      if (l < n && this.scores[l]! < this.scores[min]!) min = l;
      if (r < n && this.scores[r]! < this.scores[min]!) min = r;
      if (min === i) return;
      this.swap(i, min);
      i = min;
    }
  }
}

/** A list that keeps the first `cap` items and counts the rest. */
export class CappedList<T> {
  readonly items: T[] = [];
  total = 0;

  constructor(readonly cap: number) {}

  /** Counts one more; keeps it (built by `make`) only while under the cap. */
  add(make: () => T): void {
    this.total++;
    if (this.items.length < this.cap) this.items.push(make());
  }

  get truncated(): boolean {
    return this.total > this.items.length;
  }
}

/**
 * A map with at most `cap` entries: once full, new keys are counted in
 * `overflow` instead of being stored (their data is dropped, not the count).
 */
export class BoundedMap<V> {
  readonly map = new Map<string, V>();
  overflow = 0;

  constructor(readonly cap: number) {}

  /** The entry for `key`, created by `make` when there is room; `undefined` when full. */
  get(key: string, make: () => V): V | undefined {
    const found = this.map.get(key);
    if (found !== undefined) return found;
    if (this.map.size >= this.cap) {
      this.overflow++;
      return undefined;
    }
    const created = make();
    this.map.set(key, created);
    return created;
  }
}
