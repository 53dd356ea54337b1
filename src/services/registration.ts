import { isIP } from 'node:net';
import type { ServiceSpec } from '../config/load.js';
import type { CompiledRule } from '../mapping/mapping.js';
import { unprintable } from '../mapping/escape.js';
import { formatKey } from '../report/keys.js';
import type { ServiceFields, SourceEntry } from '../stores/types.js';

/**
 * How an etcd service registration (a Registrator-style `host:port`, a
 * SkyDNS JSON record, or JSON at configured fields) becomes an instance in
 * Consul's catalog. Pure: the rule and the entry in, a registration or the
 * reason there is none out. Values are parsed, never reported. The id and
 * name come from the rule's `id` and `name` templates.
 */
export interface Registration extends ServiceFields {
  rule: string;
  /** The etcd lease that keeps the instance alive; undefined when the key has none (no TTL check). */
  lease: string | undefined;
  /** The etcd key, printable, for reports. */
  key: string;
}

export type RegistrationProblem =
  | 'value-not-hostport'
  | 'value-not-json'
  | 'field-missing'
  | 'address-invalid'
  | 'port-invalid'
  | 'tags-invalid'
  | 'meta-invalid'
  | 'segment-missing'
  /** The name or id holds a character Consul's HTTP API refuses in a path (a control or unprintable one): Consul registers it, but answers 400 on its agent endpoints (so it could never be deregistered). */
  | 'id-invalid'
  /** Another key of the rule already registers this instance id, or one that differs only in case (Consul's catalog takes ids case-insensitively) (reported by the sync, not by {@link registrationOf}). */
  | 'id-duplicate'
  /** The agent has an instance with this id (in any case) that this rule did not register: another rule's or migration's, or one registered by hand; never overwritten. */
  | 'id-taken';

/** Who registered an instance on the agent, as its meta says (nothing for one this tool did not register). */
export interface ServiceOwner {
  id: string;
  migration?: string;
  rule?: string;
}

/**
 * Whether `owner`, the agent's instance with an id equal in any case to one `rule` of
 * `migrationId` would register, is someone else's: the rule must not overwrite it (a
 * registration replaces the instance, check and meta) nor later deregister it.
 * Returns what to say about it, or undefined when it is the rule's own.
 */
export function takenBy(owner: ServiceOwner | undefined, migrationId: string, rule: string): string | undefined {
  if (!owner || (owner.migration === migrationId && owner.rule === rule)) return undefined;
  const who = owner.migration === migrationId ? `rule ${owner.rule ?? '?'} of this migration` : owner.migration ? `migration ${owner.migration}` : 'no migration (registered by hand or by another tool)';
  return `the agent has an instance "${owner.id}" of ${who}; it is not overwritten (Consul's catalog takes ids in any case as one): give this rule an id template of its own`;
}

export type RegistrationResult =
  | { ok: true; registration: Registration }
  | { ok: false; rule: string; key: string; problem: RegistrationProblem; detail: string };

/** Meta keys the tool sets on every instance it registers: who owns it (migration, rule) and its lease. */
export const META_MIGRATION = 'etcd-migrate-id';
export const META_RULE = 'etcd-migrate-rule';
export const META_LEASE = 'etcd-lease';

/** The TTL check of an instance: one per service, named by the service id. */
export function checkIdOf(serviceId: string): string {
  return `etcd-migrate:${serviceId}`;
}

/** Consul's limits on service metadata (`structs.ValidateServiceMetadata`). */
const META_KEY = /^[A-Za-z0-9_-]{1,128}$/;
const META_MAX_VALUE = 512;
const META_MAX_PAIRS = 64;

/** Parses one etcd entry of a service rule into the instance it registers. */
export function registrationOf(rule: Pick<CompiledRule, 'name' | 'fromBytes'> & { service?: ServiceSpec }, entry: SourceEntry, migrationId: string): RegistrationResult {
  const spec = rule.service;
  const key = formatKey(entry.key);
  const fail = (problem: RegistrationProblem, detail: string): RegistrationResult => ({ ok: false, rule: rule.name, key, problem, detail });
  if (!spec) return fail('segment-missing', 'the rule has no service block');
  const segments = segmentsOf(rule, entry.key);
  const name = fillTemplate(spec.name, segments);
  if (!name.ok) return fail('segment-missing', `the service name template "${spec.name}" needs segment ${name.missing}, but the key has ${segments.length} after from`);
  const id = fillTemplate(spec.id, segments);
  if (!id.ok) return fail('segment-missing', `the instance id template "${spec.id}" needs segment ${id.missing}, but the key has ${segments.length} after from`);
  // In a path (`/v1/agent/service/deregister/<id>`, `/v1/health/service/<name>`) such a character is a 400: the instance could never be deregistered.
  const unservable = unprintable(id.text, 0) ?? unprintable(name.text, 0);
  if (unservable) return fail('id-invalid', `in the ${unprintable(id.text, 0) ? 'instance id' : 'service name'}, ${unservable.detail}; such an instance could never be deregistered`);

  let parsed: { address: string; port: number; tags: string[]; meta: Record<string, string> } | RegistrationResult;
  switch (spec.format) {
    case 'hostport':
      parsed = parseHostPort(entry.value, fail);
      break;
    case 'skydns':
    case 'json':
      parsed = parseJson(entry.value, spec, fail);
      break;
  }
  if ('ok' in parsed) return parsed;

  const meta: Record<string, string> = { ...parsed.meta, [META_MIGRATION]: migrationId, [META_RULE]: rule.name };
  if (entry.lease !== '0') meta[META_LEASE] = entry.lease;
  if (Object.keys(meta).length > META_MAX_PAIRS) return fail('meta-invalid', `${Object.keys(meta).length} meta pairs; Consul accepts at most ${META_MAX_PAIRS}`);
  return {
    ok: true,
    registration: {
      rule: rule.name,
      id: id.text,
      name: name.text,
      address: parsed.address,
      port: parsed.port,
      tags: [...new Set([...parsed.tags, ...spec.tags])],
      meta,
      lease: entry.lease === '0' ? undefined : entry.lease,
      key,
    },
  };
}

/** The instance id a key of the rule registers under (from the key alone), or undefined when the template does not fit it. */
export function instanceIdOf(rule: Pick<CompiledRule, 'fromBytes'> & { service?: ServiceSpec }, key: Buffer): string | undefined {
  if (!rule.service) return undefined;
  const id = fillTemplate(rule.service.id, segmentsOf(rule, key));
  return id.ok ? id.text : undefined;
}

function segmentsOf(rule: Pick<CompiledRule, 'fromBytes'>, key: Buffer): string[] {
  return key.subarray(rule.fromBytes.length).toString('utf8').split('/').filter((s) => s !== '');
}

type Fill = { ok: true; text: string } | { ok: false; missing: string };

/** `{1}` is the first segment after `from`, `{-1}` the last. */
function fillTemplate(template: string, segments: string[]): Fill {
  let missing: string | undefined;
  const text = template.replace(/\{(-?[1-9][0-9]*)\}/g, (_, n: string) => {
    const index = Number(n);
    const segment = index > 0 ? segments[index - 1] : segments[segments.length + index];
    if (segment === undefined) missing ??= `{${n}}`;
    return segment ?? '';
  });
  return missing ? { ok: false, missing } : { ok: true, text };
}

/** `host:port` or `[v6]:port`, as Registrator's etcd backend writes it. */
function parseHostPort(value: Buffer, fail: (p: RegistrationProblem, d: string) => RegistrationResult) {
  const text = value.toString('utf8').trim();
  const match = /^\[([0-9A-Fa-f:.]+)\]:([0-9]+)$/.exec(text) ?? /^([^\s:/[\]]+):([0-9]+)$/.exec(text);
  if (!match) return fail('value-not-hostport', `the value (${value.length} bytes) is not host:port or [ipv6]:port`);
  const port = portOf(match[2]);
  if (port === undefined) return fail('port-invalid', 'the port is not between 1 and 65535');
  if (!validAddress(match[1]!)) return fail('address-invalid', 'the address is neither an IP address nor a host name');
  return { address: match[1]!, port, tags: [] as string[], meta: {} as Record<string, string> };
}

/** SkyDNS records (`{"host": …, "port": …, "priority", "weight", "text"}`) and JSON at the rule's fields. */
function parseJson(value: Buffer, spec: ServiceSpec, fail: (p: RegistrationProblem, d: string) => RegistrationResult) {
  let doc: unknown;
  try {
    doc = JSON.parse(value.toString('utf8'));
  } catch {
    return fail('value-not-json', `the value (${value.length} bytes) is not JSON`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return fail('value-not-json', 'the value is JSON but not an object');
  const address = at(doc, spec.fields.address);
  if (typeof address !== 'string' || address === '') return fail('field-missing', `no string at field "${spec.fields.address}" for the address`);
  if (!validAddress(address)) return fail('address-invalid', `the value at "${spec.fields.address}" is neither an IP address nor a host name`);
  const rawPort = at(doc, spec.fields.port);
  if (rawPort === undefined) return fail('field-missing', `no port at field "${spec.fields.port}"`);
  const port = portOf(rawPort);
  if (port === undefined) return fail('port-invalid', `the value at "${spec.fields.port}" is not a port between 1 and 65535`);
  let tags: string[] = [];
  if (spec.fields.tags) {
    const raw = at(doc, spec.fields.tags);
    if (raw !== undefined) {
      if (!Array.isArray(raw) || !raw.every((t) => typeof t === 'string')) return fail('tags-invalid', `the value at "${spec.fields.tags}" is not a list of strings`);
      tags = raw as string[];
    }
  }
  const meta: Record<string, string> = {};
  if (spec.format === 'skydns') {
    // SkyDNS's SRV fields have no catalog counterpart; kept as meta so nothing is lost.
    for (const field of ['priority', 'weight', 'text', 'group'] as const) {
      const v = (doc as Record<string, unknown>)[field];
      if (typeof v === 'string' || typeof v === 'number') meta[`skydns-${field}`] = String(v);
    }
  }
  if (spec.fields.meta) {
    const raw = at(doc, spec.fields.meta);
    if (raw !== undefined) {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return fail('meta-invalid', `the value at "${spec.fields.meta}" is not an object`);
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') return fail('meta-invalid', 'a meta value is not a string, number or boolean');
        meta[k] = String(v);
      }
    }
  }
  for (const [k, v] of Object.entries(meta)) {
    if (!META_KEY.test(k) || k.startsWith('consul-')) return fail('meta-invalid', 'a meta key is not letters, digits, "_" and "-" (at most 128), or starts with the reserved "consul-"');
    // Consul counts bytes (Go's len), not characters.
    const bytes = Buffer.byteLength(v, 'utf8');
    if (bytes > META_MAX_VALUE) return fail('meta-invalid', `a meta value is ${bytes} bytes; Consul accepts at most ${META_MAX_VALUE}`);
  }
  return { address, port, tags, meta };
}

function at(doc: object, path: string): unknown {
  let current: unknown = doc;
  for (const part of path.split('.')) {
    if (typeof current !== 'object' || current === null) return undefined;
    current = (current as Record<string, unknown>)[part];
  }
  return current;
}

function portOf(raw: unknown): number | undefined {
  const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^[0-9]+$/.test(raw) ? Number(raw) : NaN;
  return Number.isInteger(n) && n >= 1 && n <= 65535 ? n : undefined;
}

const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/** A last label of digits only: no top-level domain is all-numeric (RFC 3696 §2), so this is a mistyped IPv4 address. */
const NUMERIC_LAST_LABEL = /(?:^|\.)[0-9]+\.?$/;

function validAddress(address: string): boolean {
  return isIP(address) !== 0 || (HOST_NAME.test(address) && !NUMERIC_LAST_LABEL.test(address));
}

/** Two registrations describe the same instance as Consul serves it (the fields a client sees). */
export function sameInstance(a: Omit<ServiceFields, 'id'>, b: Omit<ServiceFields, 'id'>): boolean {
  return a.name === b.name && a.address === b.address && a.port === b.port && sameSet(a.tags, b.tags) && sameMeta(a.meta, b.meta);
}

function sameSet(a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(a);
  return b.every((x) => set.has(x));
}

function sameMeta(a: Record<string, string>, b: Record<string, string>): boolean {
  const ak = Object.keys(a);
  return ak.length === Object.keys(b).length && ak.every((k) => a[k] === b[k]);
}
