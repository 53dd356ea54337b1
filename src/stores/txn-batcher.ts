import { UsageError } from '../errors.js';
import type { TxnOp } from './types.js';

/**
 * Consul's limits that shape every write (reference §B.2, DESIGN §3).
 * `maxTxnBytes` is the whole `/v1/txn` request body, values base64-encoded.
 */
export interface TargetLimits {
  txnMaxOps: number;
  txnMaxBytes: number;
  maxValueBytes: number;
}

/** Consul's defaults: `kv_max_value_size` and `txn_max_req_len` are both 512 KiB. */
export const DEFAULT_MAX_VALUE_BYTES = 524288;
export const DEFAULT_TXN_MAX_BYTES = 524288;

/**
 * Ops per txn by server version: 64 through 1.13, 128 from 1.14 (PR #14599).
 * An unknown or unparsable version gets the safe 64.
 */
export function txnMaxOpsForVersion(version: string | undefined): number {
  const match = /^v?(\d+)\.(\d+)/.exec(version ?? '');
  if (!match) return 64;
  const major = Number(match[1]);
  const minor = Number(match[2]);
  return major > 1 || (major === 1 && minor >= 14) ? 128 : 64;
}

/** Length of the base64 text of `n` bytes. */
export function base64Length(n: number): number {
  return 4 * Math.ceil(n / 3);
}

/** The JSON shape `/v1/txn` expects for one op. */
export function toWireOp(op: TxnOp): { KV: Record<string, unknown> } {
  const kv: Record<string, unknown> = { Verb: op.verb, Key: op.key };
  if ('value' in op) kv.Value = op.value.toString('base64');
  if ('flags' in op && op.flags !== undefined && op.flags !== 0) kv.Flags = op.flags;
  if ('index' in op) kv.Index = op.index;
  if ('session' in op) kv.Session = op.session;
  return { KV: kv };
}

/**
 * The `/v1/txn` request body for `ops`: the same JSON as
 * `JSON.stringify(ops.map(toWireOp))`, written directly (the copy's hot path).
 */
export function serializeTxn(ops: readonly TxnOp[]): string {
  const parts: string[] = [];
  for (const op of ops) {
    let text = `{"KV":{"Verb":"${op.verb}","Key":${JSON.stringify(op.key)}`;
    if ('value' in op) text += `,"Value":"${op.value.toString('base64')}"`;
    if ('flags' in op && op.flags !== undefined && op.flags !== 0) text += `,"Flags":${op.flags}`;
    if ('index' in op) text += `,"Index":${op.index}`;
    if ('session' in op) text += `,"Session":${JSON.stringify(op.session)}`;
    parts.push(`${text}}}`);
  }
  return `[${parts.join(',')}]`;
}

/** Byte length of `text` as a JSON string literal (UTF-8), without building it when nothing needs escaping. */
function jsonStringBytes(text: string): number {
  // JSON.stringify escapes only `"`, `\`, control characters and lone surrogates; everything else is copied as UTF-8.
  return /["\\\u0000-\u001f\ud800-\udfff]/.test(text) ? Buffer.byteLength(JSON.stringify(text)) : Buffer.byteLength(text) + 2;
}

/**
 * Exact byte length of one op inside the JSON array body, including the comma
 * that separates it from the next one. Computed from the parts of
 * {@link toWireOp}'s output, without encoding the value or the op.
 */
export function wireOpBytes(op: TxnOp): number {
  // {"KV":{"Verb":"<verb>","Key":<key>[,"Value":"<b64>"][,"Flags":n][,"Index":n][,"Session":<s>]}} plus a comma
  let bytes = 15 + op.verb.length + 8 + jsonStringBytes(op.key) + 2 + 1;
  if ('value' in op) bytes += 10 + base64Length(op.value.length) + 1;
  if ('flags' in op && op.flags !== undefined && op.flags !== 0) bytes += 9 + String(op.flags).length;
  if ('index' in op) bytes += 9 + String(op.index).length;
  if ('session' in op) bytes += 11 + jsonStringBytes(op.session);
  return bytes;
}

/** Body bytes of a txn holding nothing but `[]`. */
const EMPTY_BODY_BYTES = 2;

export interface BatchOptions {
  /** Ops the caller adds to every batch itself (checkpoint, leader check). */
  reservedOps?: number;
  /** Bytes the caller's own ops take in every batch. */
  reservedBytes?: number;
}

/** Room left in one txn for the caller's data ops. */
export function batchCapacity(limits: TargetLimits, options: BatchOptions = {}): { ops: number; bytes: number } {
  const ops = limits.txnMaxOps - (options.reservedOps ?? 0);
  const bytes = limits.txnMaxBytes - EMPTY_BODY_BYTES - (options.reservedBytes ?? 0);
  if (ops < 1 || bytes < 1) {
    throw new UsageError('txn_limits_too_small', `The target's txn limits (${limits.txnMaxOps} ops, ${limits.txnMaxBytes} bytes) leave no room for data after the tool's own ops.`, {
      hint: 'Raise target.limits.txnMaxOps / txnMaxBytes in migration.yaml to the values the Consul servers use.',
    });
  }
  return { ops, bytes };
}

/** Whether one op can travel in a txn at all (else it needs the single-PUT path). */
export function fitsInTxn(op: TxnOp, limits: TargetLimits, options: BatchOptions = {}): boolean {
  return wireOpBytes(op) <= batchCapacity(limits, options).bytes;
}

/** Whether a group of ops that must travel together fits one txn. */
export function groupFitsInTxn(ops: readonly TxnOp[], limits: TargetLimits, options: BatchOptions = {}): boolean {
  const capacity = batchCapacity(limits, options);
  return ops.length <= capacity.ops && ops.reduce((sum, op) => sum + wireOpBytes(op), 0) <= capacity.bytes;
}

/**
 * Incremental packer: ops go in, full batches come out, in order. Batches
 * never exceed the op or byte capacity. The caller decides what to do with an
 * op that does not fit any txn ({@link fitsInTxn}); `add` refuses it.
 */
export class TxnBatcher {
  private readonly capacity: { ops: number; bytes: number };
  private current: TxnOp[] = [];
  private currentBytes = 0;

  constructor(limits: TargetLimits, options: BatchOptions = {}) {
    this.capacity = batchCapacity(limits, options);
  }

  /** Adds an op; returns the batch it closed, if adding it filled one. */
  add(op: TxnOp): TxnOp[] | undefined {
    const bytes = wireOpBytes(op);
    if (bytes > this.capacity.bytes) {
      throw new RangeError(`op on ${JSON.stringify(op.key)} takes ${bytes} bytes, more than a txn holds (${this.capacity.bytes})`);
    }
    let closed: TxnOp[] | undefined;
    if (this.current.length + 1 > this.capacity.ops || this.currentBytes + bytes > this.capacity.bytes) {
      closed = this.flush();
    }
    this.current.push(op);
    this.currentBytes += bytes;
    return closed;
  }

  /** Whether `ops` (taken together) would fit in the open batch. */
  wouldFit(ops: readonly TxnOp[]): boolean {
    let bytes = this.currentBytes;
    for (const op of ops) bytes += wireOpBytes(op);
    return this.current.length + ops.length <= this.capacity.ops && bytes <= this.capacity.bytes;
  }

  /** Closes the open batch; `undefined` when it is empty. */
  flush(): TxnOp[] | undefined {
    if (this.current.length === 0) return undefined;
    const batch = this.current;
    this.current = [];
    this.currentBytes = 0;
    return batch;
  }

  get pendingOps(): number {
    return this.current.length;
  }
}

/** Packs a whole list of ops into batches (every op must fit a txn). */
export function packTxnBatches(ops: Iterable<TxnOp>, limits: TargetLimits, options: BatchOptions = {}): TxnOp[][] {
  const batcher = new TxnBatcher(limits, options);
  const batches: TxnOp[][] = [];
  for (const op of ops) {
    const closed = batcher.add(op);
    if (closed) batches.push(closed);
  }
  const last = batcher.flush();
  if (last) batches.push(last);
  return batches;
}

/** Splits a batch in two halves (the answer to a 413 on a batch we believed fitted). */
export function splitBatch<T>(batch: readonly T[]): [T[], T[]] {
  const middle = Math.ceil(batch.length / 2);
  return [batch.slice(0, middle), batch.slice(middle)];
}
