import type { PutOptions, ServiceDefinition, SessionSpec, TargetStore, TxnOp } from '../stores/types.js';

/** One write the copy would send, as the dry-run shows it (sizes, never values). */
export interface RecordedOp {
  op: 'txn' | 'put' | 'delete' | 'create-session' | 'destroy-session' | 'register-service' | 'deregister-service' | 'update-check';
  /** For txns: each KV op's verb, key and value size (0 for ops with no value), and the session of a lock or unlock. */
  ops?: { verb: string; key: string; bytes: number; session?: string }[];
  key?: string;
  bytes?: number;
  session?: string;
  /** A single PUT that frees the key from this session (then, with `session`, another put takes it). */
  release?: string;
  ttlSeconds?: number;
  /** Service operations: the instance id, and its service name on register. */
  service?: string;
  name?: string;
}

/**
 * A dry-run's session ids: as long as Consul's (36 characters), so its txns hold the bytes the copy's do,
 * and plainly not Consul's.
 */
export function dryRunSessionId(name: string, n = 0): string {
  return `dry-run-${name}-${String(n).padStart(27 - name.length, '0')}`;
}

/** The session of the copy lock's check in a dry-run's txns (it takes no lock). */
export const DRY_RUN_LOCK_SESSION = dryRunSessionId('copy-lock');

/**
 * The dry-run adapter (DESIGN §2): reads go to the real Consul, writes are
 * recorded instead of sent. The copy runs its real code path through it, so
 * what the dry-run prints is exactly what `copy` would send.
 */
export class RecordingTarget implements TargetStore {
  readonly recorded: RecordedOp[] = [];
  private sessions = 0;

  constructor(private readonly inner: TargetStore) {}

  info: TargetStore['info'] = () => this.inner.info();
  limits: TargetStore['limits'] = () => this.inner.limits();
  listKeys: TargetStore['listKeys'] = (prefix, signal) => this.inner.listKeys(prefix, signal);
  listFolders: TargetStore['listFolders'] = (prefix) => this.inner.listFolders(prefix);
  readEntries: TargetStore['readEntries'] = (keys, signal, hints) => this.inner.readEntries(keys, signal, hints);
  readKey: TargetStore['readKey'] = (key) => this.inner.readKey(key);
  readSession: TargetStore['readSession'] = (id) => (id.startsWith('dry-run-') ? Promise.resolve(undefined) : this.inner.readSession(id));
  listSessions: TargetStore['listSessions'] = () => this.inner.listSessions();

  /**
   * Drops the recorded KV and service writes, for a copy that plans again at a
   * newer revision; session creations stay, as the copy keeps those sessions.
   */
  forgetWrites(): void {
    const kept = this.recorded.filter((op) => op.op === 'create-session');
    this.recorded.splice(0, this.recorded.length, ...kept);
  }

  async applyTxn(ops: readonly TxnOp[]): Promise<number | undefined> {
    this.recorded.push({ op: 'txn', ops: ops.map((o) => ({ verb: o.verb, key: o.key, bytes: 'value' in o ? o.value.length : 0, ...('session' in o ? { session: o.session } : {}) })) });
    return undefined;
  }

  async putKey(key: string, value: Buffer, options: PutOptions = {}): Promise<boolean> {
    this.recorded.push({ op: 'put', key, bytes: value.length, ...(options.acquire ? { session: options.acquire } : {}), ...(options.release ? { release: options.release } : {}) });
    return true;
  }

  async deleteKey(key: string): Promise<void> {
    this.recorded.push({ op: 'delete', key });
  }

  async createSession(spec: SessionSpec): Promise<string> {
    const id = dryRunSessionId('session', ++this.sessions);
    this.recorded.push({ op: 'create-session', session: id, ttlSeconds: spec.ttlSeconds });
    return id;
  }

  async renewSession(id: string): Promise<boolean> {
    return id.startsWith('dry-run-') ? true : this.inner.renewSession(id);
  }

  async destroySession(id: string): Promise<void> {
    this.recorded.push({ op: 'destroy-session', session: id });
  }

  listServiceInstances: TargetStore['listServiceInstances'] = (id, scope, signal) => this.inner.listServiceInstances(id, scope, signal);
  agentServiceOwners: TargetStore['agentServiceOwners'] = (signal) => this.inner.agentServiceOwners(signal);

  async registerService(service: ServiceDefinition): Promise<void> {
    this.recorded.push({ op: 'register-service', service: service.id, name: service.name, ...(service.check ? { ttlSeconds: service.check.ttlSeconds } : {}) });
  }

  async deregisterService(id: string): Promise<boolean> {
    this.recorded.push({ op: 'deregister-service', service: id });
    return true;
  }

  async updateCheck(checkId: string): Promise<boolean> {
    this.recorded.push({ op: 'update-check', service: checkId });
    return true;
  }
}
