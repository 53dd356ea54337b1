/**
 * Key order and read planning for Consul's KV store.
 *
 * Consul has no paginated read. Reading values one `get` per key costs
 * Consul and the client a txn op each, and a request per op limit (128 or
 * 64 keys). A `get-tree` returns a whole prefix in one op; with the sorted
 * key list (`?keys`) at hand, the number of keys under any prefix is known
 * before reading it, so whole sub-prefixes are read at once and memory stays
 * bounded by the txn: the "chunks of sub-prefixes" of DESIGN §3. Measured on
 * 100,000 keys of 256 bytes (Consul 1.22): 1.3 Consul CPU-seconds and 1.3–1.6 s
 * in txns of 128 gets, 0.5–0.6 and 0.4–0.6 s in txns of about 1,000 keys.
 */

/**
 * Byte order of the UTF-8 keys, which is the order Consul and etcd list them
 * in. Computed on the UTF-16 text without encoding (sorting a million-key list
 * would otherwise allocate two Buffers per comparison): UTF-8 byte order is
 * code-point order, and UTF-16 units sort in code-point order except that
 * surrogates (characters above U+FFFF) must sort after U+E000–U+FFFF.
 */
export function compareKeys(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && y >= 0xd800) {
      x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
      y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
    }
    return x - y;
  }
  return a.length - b.length;
}


/** One read of a txn: a single key (`get`), or every key under a prefix (`get-tree`) for the listed `keys` there. */
export type ReadOp = { verb: 'get'; key: string } | { verb: 'get-tree'; prefix: string; keys: readonly string[] };

/** Keys one read txn may return when it reads whole prefixes: about 1,000 values of a typical size per request. */
export const TREE_READ_KEYS = 1024;

/**
 * The reads that fetch `wanted`, keys of `listed` (Consul's key list, sorted
 * by {@link compareKeys}): one `get-tree` for each prefix whose listed keys
 * are all wanted, at most `maxKeys` of them, and a `get` for every other key.
 *
 * A tree also returns keys written under its prefix after the listing: the
 * reader keeps only the wanted ones, so the result does not depend on the
 * list being current, only what is fetched does.
 */
export function planReads(listed: readonly string[], wanted: readonly string[], maxKeys: number): ReadOp[] {
  const keys = isSorted(wanted) ? wanted : [...new Set(wanted)].sort(compareKeys);
  const ops: ReadOp[] = [];
  // Key ranges still to plan, last first; every range shares its keys' prefix up to `depth`.
  const stack: { lo: number; hi: number; depth: number }[] = keys.length > 0 ? [{ lo: 0, hi: keys.length, depth: 0 }] : [];
  while (stack.length > 0) {
    const { lo, hi, depth } = stack.pop()!;
    if (hi - lo === 1) {
      ops.push({ verb: 'get', key: keys[lo]! });
      continue;
    }
    const d = sharedPrefixLength(keys[lo]!, keys[hi - 1]!, depth);
    const prefix = keys[lo]!.slice(0, d);
    if (hi - lo <= maxKeys && countWithPrefix(listed, prefix) === hi - lo) {
      ops.push({ verb: 'get-tree', prefix, keys: keys.slice(lo, hi) });
      continue;
    }
    // Split on the character after the shared prefix (a key equal to the prefix sorts first).
    const ranges: { lo: number; hi: number; depth: number }[] = [];
    let i = lo;
    if (keys[i]!.length === d) ops.push({ verb: 'get', key: keys[i++]! });
    while (i < hi) {
      const c = keys[i]!.codePointAt(d)!;
      let j = i + 1;
      while (j < hi && keys[j]!.codePointAt(d) === c) j++;
      ranges.push({ lo: i, hi: j, depth: d + (c > 0xffff ? 2 : 1) });
      i = j;
    }
    for (let r = ranges.length - 1; r >= 0; r--) stack.push(ranges[r]!);
  }
  return ops;
}

/** `ops` in order, in txns of at most `maxOps` ops and `maxKeys` keys. */
export function packReads(ops: readonly ReadOp[], maxOps: number, maxKeys: number): ReadOp[][] {
  const txns: ReadOp[][] = [];
  let txn: ReadOp[] = [];
  let keys = 0;
  for (const op of ops) {
    const n = op.verb === 'get' ? 1 : op.keys.length;
    if (txn.length > 0 && (txn.length >= maxOps || keys + n > maxKeys)) {
      txns.push(txn);
      txn = [];
      keys = 0;
    }
    txn.push(op);
    keys += n;
  }
  if (txn.length > 0) txns.push(txn);
  return txns;
}

/** The keys `ops` were planned for. */
export function keysOf(ops: readonly ReadOp[]): string[] {
  return ops.flatMap((op) => (op.verb === 'get' ? [op.key] : op.keys));
}

/** The JSON body of a read-only txn of `ops`. */
export function readTxnBody(ops: readonly ReadOp[]): string {
  return JSON.stringify(ops.map((op) => ({ KV: op.verb === 'get' ? { Verb: 'get', Key: op.key } : { Verb: 'get-tree', Key: op.prefix } })));
}

/** Sorted and without repeats. */
function isSorted(keys: readonly string[]): boolean {
  for (let i = 1; i < keys.length; i++) if (compareKeys(keys[i - 1]!, keys[i]!) >= 0) return false;
  return true;
}

/** Length of the prefix `a` and `b` share (at least `from`), never ending inside a surrogate pair. */
function sharedPrefixLength(a: string, b: string, from: number): number {
  const n = Math.min(a.length, b.length);
  let d = from;
  while (d < n && a.charCodeAt(d) === b.charCodeAt(d)) d++;
  const last = a.charCodeAt(d - 1);
  return d > from && last >= 0xd800 && last <= 0xdbff ? d - 1 : d;
}

/** How many of the sorted `keys` start with `prefix` (they sit together, from `prefix`'s place on). */
function countWithPrefix(keys: readonly string[], prefix: string): number {
  const first = firstIndex(keys, 0, (k) => compareKeys(k, prefix) >= 0);
  return firstIndex(keys, first, (k) => !k.startsWith(prefix)) - first;
}

/** The first index from `from` where `past` holds; `past` is false up to some index and true from it on. */
function firstIndex(keys: readonly string[], from: number, past: (key: string) => boolean): number {
  let low = from;
  let high = keys.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (past(keys[mid]!)) high = mid;
    else low = mid + 1;
  }
  return low;
}
