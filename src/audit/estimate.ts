/**
 * How long a copy would take, from the audited key and byte counts and a
 * throughput figure: measured against the target with `--probe`, otherwise
 * the reference figures of DESIGN §7 and reference §H (a 2-core machine,
 * dev-mode Consul): 29,000 keys/s in 64-op txns from 8 clients with 256-byte
 * values, 1,100 single-key PUTs/s, about 3,000 session creations/s.
 */
export interface Throughput {
  /** Keys per second through txns. */
  txnKeysPerSecond: number;
  /** Value bytes per second through txns (bounds the rate for large values). */
  txnBytesPerSecond: number;
  /** Single `PUT /v1/kv` per second (values too large for a txn). */
  singlePutsPerSecond: number;
  sessionsPerSecond: number;
}

export const REFERENCE_THROUGHPUT: Throughput = Object.freeze({
  txnKeysPerSecond: 29_000,
  // The 29,000 keys/s were measured with 256-byte values: 7.4 MB/s of values.
  txnBytesPerSecond: 29_000 * 256,
  singlePutsPerSecond: 1_100,
  sessionsPerSecond: 3_000,
});

export interface EstimateBasis {
  kind: 'reference' | 'probe';
  throughput: Throughput;
  /** Says in words where the figures come from. */
  text: string;
}

export interface CopyEstimate {
  keys: number;
  valueBytes: number;
  sessions: number;
  singlePutKeys: number;
  seconds: number;
  /** Seconds per part (they add up to `seconds`). */
  parts: { txns: number; singlePuts: number; sessions: number };
  basis: EstimateBasis;
}

export function referenceBasis(): EstimateBasis {
  return {
    kind: 'reference',
    throughput: { ...REFERENCE_THROUGHPUT },
    text: 'reference figures (DESIGN §7): 29,000 keys/s in txns (8 clients, 256-byte values, 2-core machine, dev-mode Consul), bounded by 7.4 MB/s of values; 1,100 single PUTs/s; 3,000 session creations/s. Run with --probe to measure this target.',
  };
}

/** The copy time for the given counts (pure). */
export function estimateCopy(copy: { keys: number; valueBytes: number; singlePutKeys: number; sessions: number; singlePutBytes?: number }, basis: EstimateBasis): CopyEstimate {
  const t = basis.throughput;
  const txnKeys = Math.max(0, copy.keys - copy.singlePutKeys);
  const txnBytes = Math.max(0, copy.valueBytes - (copy.singlePutBytes ?? 0));
  const txns = txnKeys === 0 ? 0 : Math.max(txnKeys / t.txnKeysPerSecond, txnBytes / t.txnBytesPerSecond);
  const singlePuts = copy.singlePutKeys / t.singlePutsPerSecond;
  const sessions = copy.sessions / t.sessionsPerSecond;
  const seconds = round(txns + singlePuts + sessions);
  return {
    keys: copy.keys,
    valueBytes: copy.valueBytes,
    sessions: copy.sessions,
    singlePutKeys: copy.singlePutKeys,
    seconds,
    parts: { txns: round(txns), singlePuts: round(singlePuts), sessions: round(sessions) },
    basis,
  };
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}
