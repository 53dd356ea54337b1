import { formatKey } from '../report/keys.js';

/**
 * Usage patterns the audit recognises from key shapes (and, for service
 * registrations, from the shape of small leased values, which are read but
 * never shown). Every detector looks at any depth, so `/registry/pods/x` and
 * `team-a/registry/pods/x` are both seen. Detectors return the end offset of
 * the prefix they recognised, or -1.
 */

const SLASH = 0x2f;

/** Resource folders of a Kubernetes API server's etcd storage (`/registry/<resource>/...`). */
const KUBERNETES_RESOURCES = new Set([
  'pods', 'services', 'secrets', 'configmaps', 'namespaces', 'deployments', 'replicasets', 'daemonsets', 'statefulsets',
  'events', 'minions', 'serviceaccounts', 'leases', 'endpointslices', 'clusterroles', 'clusterrolebindings', 'roles',
  'rolebindings', 'apiregistration.k8s.io', 'apiextensions.k8s.io', 'ranges', 'priorityclasses', 'persistentvolumes',
  'persistentvolumeclaims', 'controllerrevisions', 'jobs', 'cronjobs', 'masterleases', 'horizontalpodautoscalers',
  'ingress', 'validatingwebhookconfigurations', 'mutatingwebhookconfigurations', 'storageclasses', 'csinodes',
  'flowschemas', 'prioritylevelconfigurations', 'poddisruptionbudgets', 'resourcequotas', 'limitranges', 'endpoints',
]);

/** Folder names that hold locks, mutexes and leader elections. */
const LOCK_FOLDERS = new Set(['lock', 'locks', 'mutex', 'mutexes', 'election', 'elections', 'leader', 'leaders', 'leader-election', 'leader_election', 'semaphore', 'semaphores']);

/** The magic prefix of Kubernetes' protobuf storage encoding. */
const K8S_MAGIC = Buffer.from('k8s\0', 'latin1');

const REGISTRY = Buffer.from('registry', 'latin1');

function firstBytes(words: Set<string>): Uint8Array {
  const table = new Uint8Array(256);
  for (const word of words) {
    table[word.toLowerCase().charCodeAt(0)] = 1;
    table[word.toUpperCase().charCodeAt(0)] = 1;
  }
  return table;
}

const K8S_FIRST = firstBytes(KUBERNETES_RESOURCES);
const LOCK_FIRST = firstBytes(LOCK_FOLDERS);
const MAX_K8S_WORD = Math.max(...[...KUBERNETES_RESOURCES].map((w) => w.length));
const MAX_LOCK_WORD = Math.max(...[...LOCK_FOLDERS].map((w) => w.length));

/** Whether `key[start, end)` is one of `words` (ASCII case-insensitive), cheap for the common miss. */
function segmentIn(key: Buffer, start: number, end: number, words: Set<string>, first: Uint8Array, maxLength: number): boolean {
  const length = end - start;
  if (length === 0 || length > maxLength || first[key[start]!] !== 1) return false;
  return words.has(key.toString('latin1', start, end).toLowerCase());
}

/**
 * A Kubernetes control plane: a `registry/` folder whose next folder is a
 * Kubernetes resource (returns the end of `registry/`), or a value in
 * Kubernetes' protobuf encoding under any folder followed by a resource
 * folder (a custom `--etcd-prefix`; returns the end of that folder).
 */
export function detectKubernetes(key: Buffer, value: Buffer, slashes: Int32Array, count: number): number {
  const magic = value.length >= 4 && value.compare(K8S_MAGIC, 0, 4, 0, 4) === 0;
  let start = 0;
  for (let i = 0; i < count - 1; i++) {
    const end = slashes[i]!;
    const isRegistry = end - start === 8 && key.compare(REGISTRY, 0, 8, start, end) === 0;
    if ((isRegistry || magic) && segmentIn(key, end + 1, slashes[i + 1]!, KUBERNETES_RESOURCES, K8S_FIRST, MAX_K8S_WORD)) return end + 1;
    start = end + 1;
  }
  return -1;
}

/**
 * A lock or election folder: a folder named like `locks/` or `election/`
 * anywhere in the key (returns the end of that folder), else an etcd
 * `concurrency`-style key whose last segment is its own lease id in hex
 * (`<prefix>/<lease hex>`, returns the end of `<prefix>/`).
 */
export function detectLock(key: Buffer, slashes: Int32Array, count: number, leaseHex: string | undefined): number {
  let start = 0;
  for (let i = 0; i < count; i++) {
    const end = slashes[i]!;
    if (segmentIn(key, start, end, LOCK_FOLDERS, LOCK_FIRST, MAX_LOCK_WORD)) return end + 1;
    start = end + 1;
  }
  if (leaseHex && count > 0) {
    const last = slashes[count - 1]! + 1;
    if (key.length - last === leaseHex.length && key.toString('latin1', last) === leaseHex) return last;
  }
  return -1;
}

const HOST_PORT = /^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]+):\d{1,5}$/;
const HOST_FIELDS = ['host', 'Host', 'address', 'Address', 'addr', 'Addr', 'ip', 'IP', 'hostname', 'Hostname'];
const PORT_FIELDS = ['port', 'Port'];

/**
 * A service registration: a leased key whose value is `host:port` or a JSON
 * object with an address (or host) and a port. Returns the end of the folder
 * that holds the instance (`/services/<name>/`). The value is inspected, never kept.
 */
export function detectRegistration(key: Buffer, value: Buffer, slashes: Int32Array, count: number): number {
  if (count === 0 || value.length < 3 || value.length > 4096) return -1;
  const folderEnd = slashes[count - 1]! + 1;
  if (folderEnd >= key.length) return -1;
  const first = value[0]!;
  if (first === 0x7b /* { */) {
    let doc: unknown;
    try {
      doc = JSON.parse(value.toString('utf8'));
    } catch {
      return -1;
    }
    if (!doc || typeof doc !== 'object' || Array.isArray(doc)) return -1;
    const record = doc as Record<string, unknown>;
    const hasHost = HOST_FIELDS.some((f) => typeof record[f] === 'string' && (record[f] as string).length > 0);
    const hasPort = PORT_FIELDS.some((f) => (typeof record[f] === 'number' && Number.isInteger(record[f])) || (typeof record[f] === 'string' && /^\d{1,5}$/.test(record[f] as string)));
    return hasHost && hasPort ? folderEnd : -1;
  }
  if (value.length > 300) return -1;
  const text = value.toString('latin1').trim();
  const withoutScheme = text.replace(/^[a-z][a-z0-9+.-]*:\/\//, '');
  return HOST_PORT.test(withoutScheme) ? folderEnd : -1;
}

/** Lease ids are decimal int64 strings; concurrency keys carry them in lowercase hex. */
export function leaseHex(lease: string): string {
  try {
    return BigInt.asUintN(64, BigInt(lease)).toString(16);
  } catch {
    return '';
  }
}

/** Per-prefix counts of a pattern, with a bounded number of prefixes. */
export interface PatternPrefix {
  prefix: string;
  keys: number;
  leasedKeys: number;
  /** One key under the prefix, formatted. */
  example: string;
  /** Rule names (or `(identity)` / `(unmapped)`) that the prefix's keys fall under. */
  rules: string[];
  /** What the rules do with those keys (`copy`, `keep`, `skip`...), for judging. */
  handling: string[];
}

/**
 * Counts keys per recognised prefix. Keys arrive in order, so consecutive
 * hits usually share a prefix: the last one is compared as bytes before any
 * formatting, which keeps the per-key cost low on large prefixes.
 */
export class PatternCounter {
  private readonly prefixes = new Map<string, PatternPrefix>();
  private lastPrefix: Buffer | undefined;
  private last: PatternPrefix | undefined;
  overflowKeys = 0;

  constructor(private readonly cap: number) {}

  add(key: Buffer, end: number, leased: boolean, rule: string, handling: string): void {
    let entry: PatternPrefix | undefined;
    if (this.lastPrefix && this.lastPrefix.length === end && key.compare(this.lastPrefix, 0, end, 0, end) === 0) {
      entry = this.last;
    } else {
      const prefixBytes = Buffer.from(key.subarray(0, end));
      const prefix = formatKey(prefixBytes);
      entry = this.prefixes.get(prefix);
      if (!entry) {
        if (this.prefixes.size >= this.cap) {
          this.overflowKeys++;
          return;
        }
        entry = { prefix, keys: 0, leasedKeys: 0, example: formatKey(key), rules: [], handling: [] };
        this.prefixes.set(prefix, entry);
      }
      this.lastPrefix = prefixBytes;
      this.last = entry;
    }
    if (!entry) return;
    entry.keys++;
    if (leased) entry.leasedKeys++;
    if (!entry.rules.includes(rule)) entry.rules.push(rule);
    if (!entry.handling.includes(handling)) entry.handling.push(handling);
  }

  list(): PatternPrefix[] {
    return [...this.prefixes.values()].sort((a, b) => b.keys - a.keys || (a.prefix < b.prefix ? -1 : 1));
  }
}

/** Whether `key` ends in `/` (a "folder" key; F.7). */
export function isFolderKey(key: Buffer): boolean {
  return key.length > 0 && key[key.length - 1] === SLASH;
}
