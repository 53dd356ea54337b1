import { compareKeys } from './consul-reads.js';

/** What copy and verify need of a rule's Consul key list: take a key out of it. */
export interface KeyLookup {
  /** Marks `key` as produced by an etcd key; true when the list holds it and it was not taken before. */
  take(key: string): boolean;
}

/**
 * A rule's Consul key list (`?keys`, sorted in byte order) with a "taken"
 * mark per key: one byte per key beside the names, instead of a hash set
 * (which costs tens of bytes per key at a million keys). Lookups try the key
 * after the last one taken first: plain targets (`to` + the etcd key's tail)
 * arrive in the list's own order as etcd pages are read, so the common case
 * is one string comparison; escaped targets, whose order the codec changes,
 * fall back to a binary search. What is never taken is the extra keys.
 */
export class ListedKeys implements KeyLookup {
  private readonly taken: Uint8Array;
  private cursor = 0;
  private takenCount = 0;

  /** `keys` must be sorted by {@link compareKeys} (as `listKeys` returns them) and free of duplicates. */
  constructor(readonly keys: readonly string[]) {
    this.taken = new Uint8Array(keys.length);
  }

  get size(): number {
    return this.keys.length;
  }

  /** Keys not taken yet. */
  get remaining(): number {
    return this.keys.length - this.takenCount;
  }

  take(key: string): boolean {
    const i = this.indexOf(key);
    if (i < 0 || this.taken[i]) return false;
    this.taken[i] = 1;
    this.takenCount++;
    this.cursor = i + 1;
    return true;
  }

  /** The keys never taken, in list order. */
  *leftovers(): IterableIterator<string> {
    for (let i = 0; i < this.keys.length; i++) if (!this.taken[i]) yield this.keys[i]!;
  }

  private indexOf(key: string): number {
    const keys = this.keys;
    if (this.cursor < keys.length && keys[this.cursor] === key) return this.cursor;
    let low = 0;
    let high = keys.length - 1;
    while (low <= high) {
      const mid = (low + high) >>> 1;
      const order = compareKeys(keys[mid]!, key);
      if (order === 0) return mid;
      if (order < 0) low = mid + 1;
      else high = mid - 1;
    }
    return -1;
  }
}
