import type { Etcd3 } from 'etcd3';
import { prefixRange } from './key-range.js';

/**
 * One write to etcd: a put of bytes (no lease) or a delete of one key; a delete
 * with `unchangedSince` applies only if etcd has not changed the key after that
 * revision (else the whole txn is refused with SourceChangedError).
 */
export type SourceWriteOp = { verb: 'put'; key: Buffer; value: Buffer } | { verb: 'delete'; key: Buffer; unchangedSince?: number };

/** A txn's `unchangedSince` compares failed: etcd changed a key after that revision, and nothing was written. */
export class SourceChangedError extends Error {
  constructor() {
    super('etcd changed a key after the revision the txn was planned at; nothing was written');
  }
}

/**
 * Writes to etcd: only the reverse mirror (Consul → etcd after a cutover) and
 * `finalize --delete-etcd` write there. Each call is one etcd transaction
 * (all or nothing); it returns the revision it created, so the dual-run can
 * tell its own writes from an application's late writes.
 */
export interface SourceWriter {
  applyTxn(ops: readonly SourceWriteOp[]): Promise<number>;
  /**
   * Whether etcd lets this user write every key under `prefix`, asked without
   * writing: a txn whose compare never holds, with a delete of the whole range
   * in its success branch, which etcd checks for permission all the same (a
   * grant of the prefix key alone, without its range, does not pass). Throws
   * `etcd_permission_denied` if not.
   */
  probeWrite(prefix: Buffer): Promise<void>;
}

/** etcd's default `--max-txn-ops`. */
export const ETCD_TXN_MAX_OPS = 128;

/** What a writer needs of its connection to etcd: an `EtcdSource`. */
export interface WriterConnection {
  /** The `etcd3` client of each write (the source's current one: it is replaced when the TLS files are renewed). */
  readonly client: Etcd3;
  toError(err: unknown, what: string): Error;
  /** Runs a write, repeated on another member only when it reached none (see `EtcdSource.unsent`). */
  unsent<T>(fn: () => Promise<T>): Promise<T>;
}

export class EtcdWriter implements SourceWriter {
  constructor(private readonly connection: WriterConnection) {}

  async applyTxn(ops: readonly SourceWriteOp[]): Promise<number> {
    if (ops.length === 0) throw new RangeError('an empty etcd txn writes nothing');
    if (ops.length > ETCD_TXN_MAX_OPS) throw new RangeError(`an etcd txn of ${ops.length} ops exceeds etcd's default limit of ${ETCD_TXN_MAX_OPS}; batch it first`);
    try {
      const response = await this.connection.unsent(() => this.connection.client.kv.txn({
        compare: ops.flatMap((op) => (op.verb === 'delete' && op.unchangedSince !== undefined ? [{ key: op.key, target: 'Mod' as const, result: 'Less' as const, mod_revision: String(op.unchangedSince + 1) }] : [])),
        success: ops.map((op) => (op.verb === 'put' ? { request_put: { key: op.key, value: op.value } } : { request_delete_range: { key: op.key } })),
        failure: [],
      }));
      if (!response.succeeded) throw new SourceChangedError();
      return Number(response.header.revision);
    } catch (err) {
      if (err instanceof SourceChangedError) throw err;
      throw this.connection.toError(err, 'write (txn)');
    }
  }

  async probeWrite(prefix: Buffer): Promise<void> {
    try {
      // No key has a version below 0: the delete is never applied, nor is a revision made.
      const range = prefixRange(prefix);
      const response = await this.connection.unsent(() => this.connection.client.kv.txn({
        compare: [{ key: range.start, target: 'Version', result: 'Less', version: '0' }],
        success: [{ request_delete_range: { key: range.start, range_end: range.end.length > 0 ? range.end : Buffer.from([0]) } }],
        failure: [],
      }));
      if (response.succeeded) throw new Error('internal: the write probe\'s compare held');
    } catch (err) {
      throw this.connection.toError(err, 'a write probe');
    }
  }
}

/**
 * Deletes `keys`, read at `revision`, except those etcd changed after it: a
 * write that came after the read (and is in no export made from it) is never
 * deleted unseen. In txns of etcd's op limit; a txn refused for a changed key
 * is retried key by key, so only the changed ones stay. Returns those kept.
 */
export async function deleteUnchangedSince(writer: SourceWriter, keys: readonly Buffer[], revision: number): Promise<Buffer[]> {
  const kept: Buffer[] = [];
  const remove = async (batch: readonly Buffer[]) => {
    try {
      await writer.applyTxn(batch.map((key) => ({ verb: 'delete' as const, key, unchangedSince: revision })));
    } catch (err) {
      if (!(err instanceof SourceChangedError)) throw err;
      if (batch.length === 1) kept.push(batch[0]!);
      else for (const key of batch) await remove([key]);
    }
  };
  for (let i = 0; i < keys.length; i += ETCD_TXN_MAX_OPS) await remove(keys.slice(i, i + ETCD_TXN_MAX_OPS));
  return kept;
}
