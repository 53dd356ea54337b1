import { SERVICE_DEFAULTS, type ServiceFormat } from '../config/load.js';
import { formatKey } from '../report/keys.js';

/**
 * Usage patterns the audit recognises from key shapes (and, for service
 * registrations, from the shape of small leased values, which are read but
 * never shown). Every detector looks at any depth, so `/registry/pods/x` and
 * `team-a/registry/pods/x` are both seen. Detectors return the end offset of
 * the prefix they recognised, or -1; the registration detector also says how
 * the value is written, so the audit can propose the `action: service` rule.
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
 * How a registration's value is written, named as the `service:` block of an
 * `action: service` rule reads it: `hostport`; `skydns` (JSON with `host` and
 * `port`); `json` (JSON with `address` and `port`, the json format's default
 * fields); `json:<address field>/<port field>` (JSON at other top-level
 * fields); or `url` (host:port behind a scheme, which no format reads).
 */
export type RegistrationShape = 'hostport' | 'url' | 'skydns' | 'json' | `json:${string}/${string}`;

export interface RegistrationMatch {
  /** End of the folder that holds the instance (`/services/<name>/`). */
  end: number;
  shape: RegistrationShape;
}

/**
 * A service registration: a leased key whose value is `host:port` or a JSON
 * object with an address (or host) and a port. Returns the folder that holds
 * the instance (`/services/<name>/`) and the value's shape. The value is
 * inspected, never kept.
 */
export function detectRegistration(key: Buffer, value: Buffer, slashes: Int32Array, count: number): RegistrationMatch | undefined {
  if (count === 0 || value.length < 3 || value.length > 4096) return undefined;
  const end = slashes[count - 1]! + 1;
  if (end >= key.length) return undefined;
  const first = value[0]!;
  if (first === 0x7b /* { */) {
    let doc: unknown;
    try {
      doc = JSON.parse(value.toString('utf8'));
    } catch {
      return undefined;
    }
    if (!doc || typeof doc !== 'object' || Array.isArray(doc)) return undefined;
    const record = doc as Record<string, unknown>;
    const address = HOST_FIELDS.find((f) => typeof record[f] === 'string' && (record[f] as string).length > 0);
    const port = PORT_FIELDS.find((f) => (typeof record[f] === 'number' && Number.isInteger(record[f])) || (typeof record[f] === 'string' && /^\d{1,5}$/.test(record[f] as string)));
    if (!address || !port) return undefined;
    const shape: RegistrationShape = address === 'host' && port === 'port' ? 'skydns' : address === 'address' && port === 'port' ? 'json' : `json:${address}/${port}`;
    return { end, shape };
  }
  if (value.length > 300) return undefined;
  const text = value.toString('latin1').trim();
  const withoutScheme = text.replace(/^[a-z][a-z0-9+.-]*:\/\//, '');
  if (!HOST_PORT.test(withoutScheme)) return undefined;
  return { end, shape: withoutScheme === text ? 'hostport' : 'url' };
}

/** The `service:` block that reads registrations of one shape; undefined for `url`, which no format reads. */
export function serviceFormatOf(shape: RegistrationShape): { format: ServiceFormat; fields?: { address: string; port: string } } | undefined {
  if (shape === 'url') return undefined;
  if (shape === 'hostport' || shape === 'skydns' || shape === 'json') return { format: shape };
  const [address, port] = shape.slice('json:'.length).split('/') as [string, string];
  return { format: 'json', fields: { address, port } };
}

/**
 * What an `action: service` rule over registrations needs, as the audit
 * proposes it: the format of most of their values and name/id templates that
 * fit how deep below `from` the instances sit.
 */
export interface ServiceProposal {
  format: ServiceFormat;
  /** `format: json` at other fields than `address` and `port`. */
  fields?: { address: string; port: string };
  /** The service name template (`{1}`, or a literal name for instances directly under `from`). */
  name: string;
  /** The instance id template, unique on the agent. */
  id: string;
  /** What the proposal could not make fit (several value shapes or depths). */
  notes: string[];
}

/**
 * Proposes the `service:` block for the registration folders under `from`
 * (each a {@link PatternPrefix} whose `prefix` starts with `from`). Instances
 * sit one level below their folder, so a folder `d` segments below `from`
 * means keys of depth `d + 1`: at depth 1 the service is named after `from`;
 * at depth 2 the defaults (`{1}`, `{1}-{-1}`); deeper, the folder that holds
 * the instance names the service and every segment goes into the id, which
 * keeps ids unique on the agent. Undefined when no format reads the values.
 */
export function proposeServiceRule(from: string, registrations: readonly PatternPrefix[]): ServiceProposal | undefined {
  const keysByShape = new Map<RegistrationShape, number>();
  const depths = new Set<number>();
  for (const p of registrations) {
    for (const shape of p.formats ?? []) keysByShape.set(shape, (keysByShape.get(shape) ?? 0) + p.keys);
    depths.add(p.prefix.slice(from.length).split('/').filter(Boolean).length + 1);
  }
  const readable = [...keysByShape.entries()].filter(([shape]) => shape !== 'url').sort((a, b) => b[1] - a[1]);
  if (readable.length === 0 || depths.size === 0) return undefined;
  const notes: string[] = [];
  if (keysByShape.size > 1) notes.push(`values are written in several ways (${[...keysByShape.keys()].join(', ')}): keys in another than ${readable[0]![0]} make no instance`);
  const min = Math.min(...depths);
  const max = Math.max(...depths);
  let name: string;
  let id: string;
  if (min !== max) {
    name = '{-2}';
    id = '{-2}-{-1}';
    notes.push(`instances sit ${min} to ${max} levels below ${from}: the folder holding each one names its service${min === 1 ? ', and keys directly under from make no instance' : ''}; check that the ids are unique`);
  } else if (min === 1) {
    name = serviceNameOf(from);
    id = `${name}-{1}`;
  } else if (min === 2) {
    name = SERVICE_DEFAULTS.name;
    id = SERVICE_DEFAULTS.id;
  } else {
    name = `{${min - 1}}`;
    id = Array.from({ length: min }, (_, i) => `{${i + 1}}`).join('-');
  }
  return { ...serviceFormatOf(readable[0]![0])!, name, id, notes };
}

/** The folder holding a folder: `/services/web/` → `/services/`, `/web/` → `/`, `web/` → ``. */
export function parentFolder(prefix: string): string {
  return prefix.slice(0, prefix.slice(0, -1).lastIndexOf('/') + 1);
}

/** A service name from the last segment of a prefix: letters, digits and dashes, which DNS serves without a warning. */
export function serviceNameOf(prefix: string): string {
  const last = prefix.split('/').filter(Boolean).pop() ?? '';
  return last.replace(/[^A-Za-z0-9-]+/g, '-').replace(/^-+|-+$/g, '') || 'service';
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
  /** Registrations only: how their values are written. */
  formats?: RegistrationShape[];
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

  add(key: Buffer, end: number, leased: boolean, rule: string, handling: string, shape?: RegistrationShape): void {
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
    if (shape && !(entry.formats ??= []).includes(shape)) entry.formats.push(shape);
  }

  list(): PatternPrefix[] {
    return [...this.prefixes.values()].sort((a, b) => b.keys - a.keys || (a.prefix < b.prefix ? -1 : 1));
  }
}

/** Whether `key` ends in `/` (a "folder" key; F.7). */
export function isFolderKey(key: Buffer): boolean {
  return key.length > 0 && key[key.length - 1] === SLASH;
}
