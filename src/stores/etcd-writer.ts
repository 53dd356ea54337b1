import type { Etcd3 } from 'etcd3';
import { MigrateError, ServerError } from '../errors.js';

/** One write to etcd: a put of bytes (no lease) or a delete of one key. */
export type SourceWriteOp = { verb: 'put'; key: Buffer; value: Buffer } | { verb: 'delete'; key: Buffer };

/**
 * Writes to etcd: only the reverse mirror (Consul → etcd after a cutover) and
 * `finalize --delete-etcd` write there. Each call is one etcd transaction
 * (all or nothing); it returns the revision it created, so the dual-run can
 * tell its own writes from an application's late writes.
 */
export interface SourceWriter {
  applyTxn(ops: readonly SourceWriteOp[]): Promise<number>;
}

/** etcd's default `--max-txn-ops`. */
export const ETCD_TXN_MAX_OPS = 128;

export class EtcdWriter implements SourceWriter {
  constructor(private readonly client: Etcd3, private readonly toError: (err: unknown, what: string) => Error = defaultError) {}

  async applyTxn(ops: readonly SourceWriteOp[]): Promise<number> {
    if (ops.length === 0) throw new RangeError('an empty etcd txn writes nothing');
    if (ops.length > ETCD_TXN_MAX_OPS) throw new RangeError(`an etcd txn of ${ops.length} ops exceeds etcd's default limit of ${ETCD_TXN_MAX_OPS}; batch it first`);
    try {
      const response = await this.client.kv.txn({
        compare: [],
        success: ops.map((op) => (op.verb === 'put' ? { request_put: { key: op.key, value: op.value } } : { request_delete_range: { key: op.key } })),
        failure: [],
      });
      return Number(response.header.revision);
    } catch (err) {
      throw this.toError(err, 'write (txn)');
    }
  }
}

function defaultError(err: unknown, what: string): Error {
  if (err instanceof MigrateError) return err;
  return new ServerError('etcd_failed', `etcd failed ${what}: ${String((err as Error)?.message ?? err).split('\n')[0]}`, { cause: err });
}
