/**
 * How long a copy would take, from the audited key and byte counts and a
 * throughput figure: measured against the target with `--probe`, otherwise
 * the reference figures of DESIGN §7 and reference §H (a 2-core machine,
 * dev-mode Consul): 29,000 keys/s in 64-op txns from 8 clients with 256-byte
 * values, 1,100 single-key PUTs/s; and 1,200 leases/s, each a session
 * created and recorded after its TTL is read from etcd (measured: a copy of
 * 8,000 one-key leases took 6.7 s on that machine; Consul alone creates about
 * 5,000 sessions/s, the tool's work per lease is the limit).
 */
export interface Throughput {
  /** Keys per second through txns. */
  txnKeysPerSecond: number;
  /** Value bytes per second through txns (bounds the rate for large values). */
  txnBytesPerSecond: number;
  /** Single `PUT /v1/kv` per second (values too large for a txn). */
  singlePutsPerSecond: number;
  /** Leases per second turned into recorded sessions. */
  sessionsPerSecond: number;
}

export const REFERENCE_THROUGHPUT: Throughput = Object.freeze({
  txnKeysPerSecond: 29_000,
  // The 29,000 keys/s were measured with 256-byte values: 7.4 MB/s of values.
  txnBytesPerSecond: 29_000 * 256,
  singlePutsPerSecond: 1_100,
  sessionsPerSecond: 1_200,
});

export interface EstimateBasis {
  kind: 'reference' | 'probe';
  throughput: Throughput;
  /** Says in words where the figures come from. */
  text: string;
}

export interface CopyEstimate {
  /** Keys written (with several datacenters: summed over them, one full copy each). */
  keys: number;
  valueBytes: number;
  sessions: number;
  singlePutKeys: number;
  seconds: number;
  /** Seconds per part (they add up to `seconds`). */
  parts: { txns: number; singlePuts: number; sessions: number };
  basis: EstimateBasis;
  /** Present only when the configuration names datacenters: how many are written, one after the other, each a full copy. */
  datacenters?: number;
}

/** The counts one copy writes (one datacenter's, or the only one's). */
export interface CopyCounts {
  keys: number;
  valueBytes: number;
  singlePutKeys: number;
  sessions: number;
  singlePutBytes?: number;
}

export function referenceBasis(): EstimateBasis {
  return {
    kind: 'reference',
    throughput: { ...REFERENCE_THROUGHPUT },
    text: 'reference figures (DESIGN §7): 29,000 keys/s in txns (8 clients, 256-byte values, 2-core machine, dev-mode Consul), bounded by 7.4 MB/s of values; 1,100 single PUTs/s; 1,200 leases/s made into sessions. Run with --probe to measure this target.',
  };
}

/** The copy time for the given counts (pure). */
export function estimateCopy(copy: CopyCounts, basis: EstimateBasis): CopyEstimate {
  const parts = copyParts(copy, basis.throughput);
  return {
    keys: copy.keys,
    valueBytes: copy.valueBytes,
    sessions: copy.sessions,
    singlePutKeys: copy.singlePutKeys,
    seconds: round(parts.txns + parts.singlePuts + parts.sessions),
    parts: { txns: round(parts.txns), singlePuts: round(parts.singlePuts), sessions: round(parts.sessions) },
    basis,
  };
}

/**
 * The copy time when each datacenter gets a copy of its own (issue 11): the
 * copy writes them one after the other, so the times add up, as do the keys,
 * bytes and sessions written (pure).
 */
export function estimateCopies(copies: readonly CopyCounts[], basis: EstimateBasis): CopyEstimate {
  const each = copies.map((copy) => copyParts(copy, basis.throughput));
  const sum = <T>(items: readonly T[], f: (item: T) => number) => items.reduce((n, item) => n + f(item), 0);
  const txns = sum(each, (p) => p.txns);
  const singlePuts = sum(each, (p) => p.singlePuts);
  const sessions = sum(each, (p) => p.sessions);
  return {
    keys: sum(copies, (c) => c.keys),
    valueBytes: sum(copies, (c) => c.valueBytes),
    sessions: sum(copies, (c) => c.sessions),
    singlePutKeys: sum(copies, (c) => c.singlePutKeys),
    seconds: round(txns + singlePuts + sessions),
    parts: { txns: round(txns), singlePuts: round(singlePuts), sessions: round(sessions) },
    basis,
    datacenters: copies.length,
  };
}

/** Seconds per part of one copy, unrounded. */
function copyParts(copy: CopyCounts, t: Throughput): { txns: number; singlePuts: number; sessions: number } {
  const txnKeys = Math.max(0, copy.keys - copy.singlePutKeys);
  const txnBytes = Math.max(0, copy.valueBytes - (copy.singlePutBytes ?? 0));
  return {
    txns: txnKeys === 0 ? 0 : Math.max(txnKeys / t.txnKeysPerSecond, txnBytes / t.txnBytesPerSecond),
    singlePuts: copy.singlePutKeys / t.singlePutsPerSecond,
    sessions: copy.sessions / t.sessionsPerSecond,
  };
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}
