/**
 * `etcd-consul-migrate/client`: the key-value client for Node applications
 * during an etcd → Consul migration. The application keeps its etcd key names;
 * the client sends each call to the store that owns the key's rule and follows
 * `migrate cutover` / `rollback` at run time, without a redeploy.
 *
 * @packageDocumentation
 */
export {
  createKvClient,
  KvClient,
  type KvClientOptions,
  type KvClientEvents,
  type KvClientStats,
  type KvValue,
  type ShadowReadOptions,
  type PauseEvent,
  type SwitchEvent,
  type MismatchEvent,
  type ClientErrorEvent,
  type RuleStats,
} from './client.js';
export { KvWatch, type KvWatchEvent, type WatchOptions } from './watch.js';
export { PHASES, PhaseDocumentError, type Owner, type Phase, type PhaseDocument, type RulePhase } from './phase.js';
export type { KvKey } from './keys.js';
export type { ShadowStats, ShadowVerdict, ShadowSkip } from './shadow.js';
export { loadConfig, parseConfig, type LoadedConfig } from '../config/load.js';
export { MigrateError, isMigrateError } from '../errors.js';
