/**
 * Key order and read planning for Consul's KV store.
 *
 * Consul has no paginated read. Reading values one `get` per key costs
 * Consul and the client a txn op each, and a request per op limit (128 or
 * 64 keys). A `get-tree` returns a whole prefix in one op; with the sorted
 * key list (`?keys`) at hand, the number of keys under any prefix is known
 * before reading it, so whole sub-prefixes are read at once: the "chunks of
 * sub-prefixes" of DESIGN §3. Memory stays bounded by the txn: the op limit's
 * worth of keys, or more while the sizes etcd gives stay within 4 MiB. Measured on
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


/** A UTF-16 unit from which UTF-16 order and UTF-8 byte order can differ (surrogates, and U+E000–U+FFFF after them). */
const WIDE_UNIT = /[\uD800-\uFFFF]/;

/**
 * Whether `keys` are in strictly increasing {@link compareKeys} order. Lists
 * come from Consul and etcd already in that order, so this is the common
 * answer, and it is found with the engine's own string comparison (a tenth of
 * the time of calling {@link compareKeys} on each pair): while no key holds a
 * unit from U+D800 on, UTF-16 order is byte order.
 */
export function inKeyOrder(keys: readonly string[]): boolean {
  let ordered = true;
  for (let i = 1; i < keys.length && ordered; i++) ordered = keys[i - 1]! < keys[i]!;
  if (!keys.some((k) => WIDE_UNIT.test(k))) return ordered;
  for (let i = 1; i < keys.length; i++) if (compareKeys(keys[i - 1]!, keys[i]!) >= 0) return false;
  return true;
}

/** `keys` sorted by {@link compareKeys}, in place. */
export function sortKeys(keys: string[]): string[] {
  return inKeyOrder(keys) ? keys : keys.sort(compareKeys);
}

/**
 * One read of a txn: a single key (`get`), or every key under a prefix
 * (`get-tree`) for the listed `keys` there; `bytes` is the size their values
 * are expected to have (Infinity when unknown).
 */
export type ReadOp = { verb: 'get'; key: string; bytes: number } | { verb: 'get-tree'; prefix: string; keys: readonly string[]; bytes: number };

/** What the caller knows about the keys it reads. */
export interface ReadHints {
  /** Consul's key list (sorted by {@link compareKeys}) the keys were taken from: whole sub-prefixes are read at once. */
  listed?: readonly string[];
  /**
   * The size each key's value is expected to have (etcd's, at the same index as
   * the key). Without it a txn holds no more keys than a txn of gets, so large
   * values cannot make a response grow past the op limit's worth of them.
   */
  valueBytes?: readonly number[];
}

/**
 * How many keys a read txn holds. Any txn may hold `opKeys` (the server's op
 * limit: what a txn of gets holds), whatever their size; more, up to
 * `maxKeys`, only while their expected values stay within `maxBytes`.
 */
export interface ReadLimits {
  opKeys: number;
  maxKeys: number;
  maxBytes: number;
  /** The request body a txn may have (Consul's txn_max_req_len): the keys it names count, long ones most. */
  requestBytes: number;
}

/** A read txn holds up to 1,024 keys or 4 MiB of expected values, whichever comes first (or the op limit's worth of keys). */
export const TREE_READ_KEYS = 1024;
export const TREE_READ_BYTES = 4 * 1024 * 1024;

/** The read limits for a server whose txns take `opKeys` ops and request bodies of `requestBytes` (Consul's default 512 KiB). */
export function readLimits(opKeys: number, requestBytes = 512 * 1024): ReadLimits {
  return { opKeys, maxKeys: Math.max(opKeys, TREE_READ_KEYS), maxBytes: TREE_READ_BYTES, requestBytes };
}

/** At most the bytes `op` takes in a txn body: its JSON around the key, and the key (3 bytes a UTF-16 unit at most). */
function requestBytesOf(op: ReadOp): number {
  return 48 + 3 * (op.verb === 'get' ? op.key.length : op.prefix.length);
}

function fits(limits: ReadLimits, keys: number, bytes: number): boolean {
  return keys <= limits.opKeys || (keys <= limits.maxKeys && bytes <= limits.maxBytes);
}

/**
 * The reads that fetch `wanted`: with `hints.listed`, one `get-tree` for each
 * prefix whose listed keys are all wanted and fit one txn (see
 * {@link ReadLimits}), and a `get` for every other key. In key order.
 *
 * A tree also returns keys written under its prefix after the listing: the
 * reader keeps only the wanted ones, so the result does not depend on the
 * list being current, only what is fetched does.
 */
export function planReads(wanted: readonly string[], hints: ReadHints, limits: ReadLimits): ReadOp[] {
  // Sizes count only when every key has one.
  const sizes = hints.valueBytes?.length === wanted.length && hints.valueBytes.every(Number.isFinite) ? hints.valueBytes : undefined;
  const { keys, bytes } = sortedWithSizes(wanted, sizes);
  const listed = hints.listed;
  const ops: ReadOp[] = [];
  // bytesBefore[i]: the expected bytes of keys[0..i).
  const bytesBefore = new Float64Array(sizes ? keys.length + 1 : 0);
  if (sizes) for (let i = 0; i < keys.length; i++) bytesBefore[i + 1] = bytesBefore[i]! + bytes(i);
  const get = (i: number): ReadOp => ({ verb: 'get', key: keys[i]!, bytes: bytes(i) });
  // Key ranges still to plan, last first; every range shares its keys' prefix up to `depth`.
  const stack: { lo: number; hi: number; depth: number }[] = keys.length > 0 ? [{ lo: 0, hi: keys.length, depth: 0 }] : [];
  while (stack.length > 0) {
    const { lo, hi, depth } = stack.pop()!;
    if (hi - lo === 1 || !listed) {
      for (let i = lo; i < hi; i++) ops.push(get(i));
      continue;
    }
    const d = sharedPrefixLength(keys[lo]!, keys[hi - 1]!, depth);
    const prefix = keys[lo]!.slice(0, d);
    const treeBytes = sizes ? bytesBefore[hi]! - bytesBefore[lo]! : Infinity;
    if (fits(limits, hi - lo, treeBytes) && countWithPrefix(listed, prefix) === hi - lo) {
      ops.push({ verb: 'get-tree', prefix, keys: keys.slice(lo, hi), bytes: treeBytes });
      continue;
    }
    // Split on the character after the shared prefix (a key equal to the prefix sorts first).
    const ranges: { lo: number; hi: number; depth: number }[] = [];
    let i = lo;
    if (keys[i]!.length === d) ops.push(get(i++));
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

/** `ops` in order, in txns of at most `maxOps` ops that fit `limits`. */
export function packReads(ops: readonly ReadOp[], maxOps: number, limits: ReadLimits): ReadOp[][] {
  const txns: ReadOp[][] = [];
  let txn: ReadOp[] = [];
  let keys = 0;
  let bytes = 0;
  let request = 0;
  for (const op of ops) {
    const n = op.verb === 'get' ? 1 : op.keys.length;
    const opRequest = requestBytesOf(op);
    if (txn.length > 0 && (txn.length >= maxOps || !fits(limits, keys + n, bytes + op.bytes) || request + opRequest > limits.requestBytes)) {
      txns.push(txn);
      txn = [];
      keys = 0;
      bytes = 0;
      request = 0;
    }
    txn.push(op);
    keys += n;
    bytes += op.bytes;
    request += opRequest;
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

/** `keys` sorted by {@link compareKeys} without repeats, and the expected size of each (Infinity when unknown). */
function sortedWithSizes(keys: readonly string[], sizes: readonly number[] | undefined): { keys: readonly string[]; bytes: (i: number) => number } {
  const sizeAt = (i: number) => (sizes ? sizes[i]! : Infinity);
  if (inKeyOrder(keys)) return { keys, bytes: sizeAt };
  const order = keys.map((_, i) => i).sort((a, b) => compareKeys(keys[a]!, keys[b]!));
  const unique = order.filter((i, n) => n === 0 || keys[order[n - 1]!] !== keys[i]);
  return { keys: unique.map((i) => keys[i]!), bytes: (n) => sizeAt(unique[n]!) };
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
