import pLimit from 'p-limit';
import type { TargetStore, TxnOp } from '../stores/types.js';
import { REFERENCE_THROUGHPUT, type EstimateBasis } from './estimate.js';
import { estimateOpBytes, type TxnCapacity } from './inventory.js';

/**
 * `--probe`: a short write test against the target, so the estimate rests on
 * this Consul rather than on reference figures. It writes scratch keys only,
 * under the state prefix's `scratch/` folder (`_migrate/<id>/scratch/`), and
 * deletes them again with one `delete-tree` of its own folder.
 */
export interface ProbeOptions {
  /** The scratch folder (`statePaths(...).scratch`); must end with `/`. */
  scratchPrefix: string;
  /** A unique name for this run's folder. */
  runId: string;
  capacity: TxnCapacity;
  /** Keys written through txns (default 512). */
  keys?: number;
  /** Single PUTs, one after the other (default 50). */
  singlePuts?: number;
  /** Value size of the probe keys: the audited mean, clamped to 16 B – 64 KiB. */
  valueBytes: number;
  concurrency?: number;
  now?: () => number;
  signal?: AbortSignal;
}

export interface ProbeResult {
  keys: number;
  valueBytes: number;
  txns: number;
  txnSeconds: number;
  singlePuts: number;
  singlePutSeconds: number;
  basis: EstimateBasis;
}

export async function probeThroughput(target: TargetStore, options: ProbeOptions): Promise<ProbeResult> {
  if (!options.scratchPrefix.endsWith('/')) throw new RangeError('the probe folder must end with "/"');
  const now = options.now ?? (() => performance.now());
  const folder = `${options.scratchPrefix}audit-probe-${options.runId}/`;
  const keys = Math.max(1, options.keys ?? 512);
  const singlePuts = Math.max(1, options.singlePuts ?? 50);
  const valueBytes = Math.min(65536, Math.max(16, Math.round(options.valueBytes)));
  const value = Buffer.alloc(valueBytes, 0x61);
  const perOp = estimateOpBytes(folder.length + 8, valueBytes);
  const perTxn = Math.max(1, Math.min(options.capacity.ops, Math.floor(options.capacity.bytes / perOp)));
  const batches: TxnOp[][] = [];
  for (let i = 0; i < keys; i += perTxn) {
    batches.push(Array.from({ length: Math.min(perTxn, keys - i) }, (_, j) => ({ verb: 'set' as const, key: `${folder}t${String(i + j).padStart(7, '0')}`, value })));
  }
  const limit = pLimit(Math.max(1, options.concurrency ?? 8));
  try {
    const t0 = now();
    await Promise.all(batches.map((ops) => limit(() => target.applyTxn(ops, options.signal))));
    const txnSeconds = Math.max(0.001, (now() - t0) / 1000);
    const t1 = now();
    for (let i = 0; i < singlePuts; i++) await target.putKey(`${folder}p${String(i).padStart(7, '0')}`, value);
    const singlePutSeconds = Math.max(0.001, (now() - t1) / 1000);
    const txnKeysPerSecond = Math.round(keys / txnSeconds);
    return {
      keys,
      valueBytes,
      txns: batches.length,
      txnSeconds,
      singlePuts,
      singlePutSeconds,
      basis: {
        kind: 'probe',
        throughput: {
          txnKeysPerSecond,
          txnBytesPerSecond: Math.round((keys * valueBytes) / txnSeconds),
          singlePutsPerSecond: Math.round(singlePuts / singlePutSeconds),
          sessionsPerSecond: REFERENCE_THROUGHPUT.sessionsPerSecond,
        },
        text: `measured against this target with --probe: ${keys} keys of ${valueBytes} bytes in ${batches.length} txns of up to ${perTxn} ops (${options.concurrency ?? 8} in flight) took ${txnSeconds.toFixed(2)} s; ${singlePuts} single PUTs took ${singlePutSeconds.toFixed(2)} s; sessions use the reference 1,200 leases/s. A probe is short: treat the figure as ±30%.`,
      },
    };
  } finally {
    // The folder is the probe's own (a fresh run id under the scratch prefix): removing it touches nothing else.
    await target.applyTxn([{ verb: 'delete-tree', key: folder }]);
  }
}
