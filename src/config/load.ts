import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { UsageError } from '../errors.js';
import { compileMapping, type Mapping } from '../mapping/mapping.js';
import { ConfigError, validateNode, type Spec, type ValidationContext } from './schema.js';

/**
 * `migration.yaml`, schema version 1 (DESIGN §4). Secrets are never inline:
 * the file names an environment variable or a file that holds them.
 */
export interface MigrationConfig {
  version: 1;
  id: string;
  state: { prefix: string };
  source: {
    endpoints?: string[];
    tls?: { ca?: string; cert?: string; key?: string };
    auth?: { user?: string; passwordEnv?: string; passwordFile?: string };
  };
  target: {
    address?: string;
    datacenter?: string;
    namespace?: string;
    partition?: string;
    tokenEnv?: string;
    tokenFile?: string;
    tls?: { ca?: string; cert?: string; key?: string; verify?: boolean };
    limits?: { maxValueBytes?: number; txnMaxOps?: number; txnMaxBytes?: number };
  };
  defaults: RuleDefaults;
  rules: RuleConfig[];
}

export type RuleAction = 'copy' | 'keep' | 'service';
export type KeyPolicy = 'reject' | 'escape';
export type LeasePolicy = 'session' | 'persist' | 'skip';
export type UnmappedPolicy = 'skip' | 'error';

export interface RuleDefaults {
  keys: KeyPolicy;
  leases: LeasePolicy;
  unmapped: UnmappedPolicy;
}

export interface RuleConfig {
  name: string;
  from: string;
  to: string;
  action: RuleAction;
  keys: KeyPolicy;
  leases: LeasePolicy;
  /**
   * `action: copy` only: the Consul datacenters that get a copy of the rule's
   * keys (KV is per datacenter). Unset: the target's own datacenter only.
   */
  datacenters?: string[];
  /** `action: service` only: how a key and its value become a catalog instance (defaults filled in). */
  service?: ServiceSpec;
}

/** The value formats a service rule reads: `host:port`, SkyDNS JSON, or JSON at the given fields. */
export type ServiceFormat = 'hostport' | 'skydns' | 'json';

/**
 * `rules[].service`: the registration an etcd key becomes. `name` and `id` are
 * templates over the key's segments after `from` (`{1}` the first, `{-1}` the
 * last). The TTL check is kept passing by the tool while the etcd lease lives.
 */
export interface ServiceSpec {
  format: ServiceFormat;
  /** `format: json`: dotted paths in the value. */
  fields: { address: string; port: string; tags?: string; meta?: string };
  name: string;
  id: string;
  /** Added to every instance. */
  tags: string[];
  check: {
    ttlSeconds: number;
    /** Consecutive failed lease checks tolerated before the tool marks the instance critical. */
    failuresBeforeCritical: number;
    /** Consecutive good lease checks before a critical instance passes again. */
    successBeforePassing: number;
    /** Consul removes an instance critical for this long; none by default. */
    deregisterCriticalAfterSeconds?: number;
  };
}

/** A schema-valid configuration and where it came from (for messages and `doctor`). */
export interface ParsedConfig {
  config: MigrationConfig;
  /** Absolute path, or undefined when no file was found (doctor works without one). */
  file: string | undefined;
  /** Parsed document with positions, for later cross-field checks. */
  document: Document | undefined;
  lineCounter: LineCounter | undefined;
}

/** What every command loads: the configuration and its compiled, cross-checked mapping. */
export interface LoadedConfig extends ParsedConfig {
  mapping: Mapping;
}

const tlsSpec: Spec = { kind: 'object', fields: { ca: { kind: 'string' }, cert: { kind: 'string' }, key: { kind: 'string' } } };
/** A migration id or a rule name. */
export const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const INLINE_SECRET = 'Secrets are never written in migration.yaml: name an environment variable or a file instead.';

/** Literal text and `{n}` / `{-n}` segment references, at least one of them. */
const TEMPLATE = /^(?:[^{}]|\{-?[1-9][0-9]*\})+$/;
const TEMPLATE_TEXT = 'a template of text and key segments such as "{1}" (the first segment after from) or "{-1}" (the last)';
const DURATION = /^[0-9]+(?:ms|s|m|h)$/;
const DURATION_TEXT = 'a duration such as "30s", "5m" or "1h"';
/** A TTL check's TTL: at least 1 s (Consul refuses 0 at the first registration, after the copy has written its state; a shorter one flaps). */
const CHECK_TTL = /^(?:[0-9]*[1-9][0-9]*(?:s|m|h)|[0-9]*[1-9][0-9]{3,}ms)$/;
const CHECK_TTL_TEXT = 'a duration of at least 1s, such as "30s", "5m" or "1h"';

/** Defaults of `rules[].service` (DESIGN §3 and the README's service rules). */
export const SERVICE_DEFAULTS = {
  format: 'hostport',
  name: '{1}',
  id: '{1}-{-1}',
  ttlSeconds: 30,
  failuresBeforeCritical: 3,
  successBeforePassing: 1,
} as const;

/** `30s`, `5m`, `1h`, `500ms` in seconds. */
export function durationSeconds(text: string): number {
  const match = /^([0-9]+)(ms|s|m|h)$/.exec(text);
  if (!match) throw new Error(`internal: not a duration: ${text}`);
  const n = Number(match[1]);
  return match[2] === 'ms' ? n / 1000 : match[2] === 'm' ? n * 60 : match[2] === 'h' ? n * 3600 : n;
}

type RawServiceSpec = { format?: ServiceFormat; fields?: ServiceSpec['fields']; name?: string; id?: string; tags?: string[]; check?: { ttl?: string; failuresBeforeCritical?: number; successBeforePassing?: number; deregisterCriticalAfter?: string } };

function serviceSpec(raw: RawServiceSpec): ServiceSpec {
  const format = raw.format ?? SERVICE_DEFAULTS.format;
  const check = raw.check ?? {};
  return {
    format,
    fields: raw.fields ?? (format === 'skydns' ? { address: 'host', port: 'port' } : { address: 'address', port: 'port' }),
    name: raw.name ?? SERVICE_DEFAULTS.name,
    id: raw.id ?? SERVICE_DEFAULTS.id,
    tags: raw.tags ?? [],
    check: {
      ttlSeconds: check.ttl ? durationSeconds(check.ttl) : SERVICE_DEFAULTS.ttlSeconds,
      failuresBeforeCritical: check.failuresBeforeCritical ?? SERVICE_DEFAULTS.failuresBeforeCritical,
      successBeforePassing: check.successBeforePassing ?? SERVICE_DEFAULTS.successBeforePassing,
      ...(check.deregisterCriticalAfter ? { deregisterCriticalAfterSeconds: durationSeconds(check.deregisterCriticalAfter) } : {}),
    },
  };
}

const ruleSpec: Spec = {
  kind: 'object',
  required: ['name', 'from'],
  fields: {
    name: { kind: 'string', pattern: NAME, patternText: 'a name of letters, digits, ".", "_" and "-"' },
    from: { kind: 'string', nonEmpty: true },
    to: { kind: 'string' },
    action: { kind: 'string', enum: ['copy', 'keep', 'service'] },
    keys: { kind: 'string', enum: ['reject', 'escape'] },
    leases: { kind: 'string', enum: ['session', 'persist', 'skip'] },
    datacenters: { kind: 'array', nonEmpty: true, items: { kind: 'string', pattern: NAME, patternText: 'a datacenter name such as "dc1"' } },
    service: {
      kind: 'object',
      fields: {
        format: { kind: 'string', enum: ['hostport', 'skydns', 'json'] },
        fields: { kind: 'object', required: ['address', 'port'], fields: { address: { kind: 'string', nonEmpty: true }, port: { kind: 'string', nonEmpty: true }, tags: { kind: 'string', nonEmpty: true }, meta: { kind: 'string', nonEmpty: true } } },
        name: { kind: 'string', pattern: TEMPLATE, patternText: TEMPLATE_TEXT },
        id: { kind: 'string', pattern: TEMPLATE, patternText: TEMPLATE_TEXT },
        tags: { kind: 'strings' },
        check: {
          kind: 'object',
          fields: {
            ttl: { kind: 'string', pattern: CHECK_TTL, patternText: CHECK_TTL_TEXT },
            failuresBeforeCritical: { kind: 'integer', min: 1, max: 100 },
            successBeforePassing: { kind: 'integer', min: 1, max: 100 },
            deregisterCriticalAfter: { kind: 'string', pattern: DURATION, patternText: DURATION_TEXT },
          },
        },
      },
    },
  },
};

export const configSpec: Spec = {
  kind: 'object',
  required: ['version', 'id'],
  fields: {
    version: { kind: 'integer', min: 1, max: 1 },
    id: { kind: 'string', pattern: NAME, patternText: 'an id of letters, digits, ".", "_" and "-"' },
    state: { kind: 'object', fields: { prefix: { kind: 'string', nonEmpty: true } } },
    source: {
      kind: 'object',
      fields: {
        endpoints: { kind: 'strings' },
        tls: tlsSpec,
        // etcdctl's ETCDCTL_USER may carry `user:password`; the file may not (a password never goes in migration.yaml).
        auth: { kind: 'object', fields: { user: { kind: 'string', secret: true, pattern: /^[^:]*$/, patternText: `a user name without ":" (what follows it would be taken as the password). ${INLINE_SECRET}` }, passwordEnv: { kind: 'string' }, passwordFile: { kind: 'string' } }, hint: { password: INLINE_SECRET } },
      },
    },
    target: {
      kind: 'object',
      hint: { token: INLINE_SECRET },
      fields: {
        address: { kind: 'string', nonEmpty: true },
        datacenter: { kind: 'string', nonEmpty: true },
        namespace: { kind: 'string' },
        partition: { kind: 'string' },
        tokenEnv: { kind: 'string' },
        tokenFile: { kind: 'string' },
        tls: { kind: 'object', fields: { ...(tlsSpec as { fields: Record<string, Spec> }).fields, verify: { kind: 'boolean' } } },
        limits: {
          kind: 'object',
          fields: {
            maxValueBytes: { kind: 'integer', min: 1 },
            txnMaxOps: { kind: 'integer', min: 2, max: 4096 },
            txnMaxBytes: { kind: 'integer', min: 1024 },
          },
        },
      },
    },
    defaults: {
      kind: 'object',
      fields: {
        keys: { kind: 'string', enum: ['reject', 'escape'] },
        leases: { kind: 'string', enum: ['session', 'persist', 'skip'] },
        unmapped: { kind: 'string', enum: ['skip', 'error'] },
      },
    },
    rules: { kind: 'array', items: ruleSpec },
  },
};

export const DEFAULT_STATE_PREFIX = '_migrate/';

/** The configuration used when there is no file (doctor, or flags and environment only). */
export function emptyConfig(): MigrationConfig {
  return { version: 1, id: 'default', state: { prefix: DEFAULT_STATE_PREFIX }, source: {}, target: {}, defaults: { keys: 'reject', leases: 'session', unmapped: 'skip' }, rules: [] };
}

/**
 * Finds the mapping file: `--config`, else `$MIGRATE_CONFIG`, else
 * `./migration.yaml` when it exists (DESIGN §4).
 */
export function findConfigFile(flag: string | undefined, env: NodeJS.ProcessEnv, cwd: string): string | undefined {
  const named = flag ?? env.MIGRATE_CONFIG;
  if (named) {
    const file = resolve(cwd, named);
    if (!existsSync(file)) {
      throw new UsageError('config_not_found', `The configuration file ${file} does not exist (named by ${flag ? '--config' : 'MIGRATE_CONFIG'}).`, {
        hint: 'Pass the path of migration.yaml with --config, or run `migrate init` to draft one.',
      });
    }
    return file;
  }
  const local = resolve(cwd, 'migration.yaml');
  return existsSync(local) ? local : undefined;
}

/**
 * Parses and validates configuration text, then compiles the mapping (the
 * rules checked against each other: `compileMapping`); `file` names it in
 * messages. Throws `ConfigError` (exit 2) with file:line:column.
 */
export function parseConfig(text: string, file: string): LoadedConfig {
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, prettyErrors: true, uniqueKeys: true });
  const ctx: ValidationContext = { file, lineCounter };
  const [error] = document.errors;
  if (error) {
    const pos = error.linePos?.[0];
    throw new ConfigError(file, pos ? { line: pos.line, col: pos.col } : undefined, '', `not valid YAML: ${error.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}`);
  }
  if (document.contents === null) throw new ConfigError(file, undefined, '', 'the file is empty; expected a mapping with at least `version: 1` and `id`');
  const raw = validateNode(document.contents as Node, configSpec, '', ctx) as Partial<MigrationConfig> & Record<string, unknown>;
  const defaults: RuleDefaults = { keys: 'reject', leases: 'session', unmapped: 'skip', ...(raw.defaults ?? {}) };
  const config: MigrationConfig = {
    version: 1,
    id: raw.id as string,
    state: { prefix: DEFAULT_STATE_PREFIX, ...(raw.state ?? {}) },
    source: raw.source ?? {},
    target: raw.target ?? {},
    defaults,
    rules: ((raw.rules ?? []) as (Omit<Partial<RuleConfig>, 'service'> & { service?: RawServiceSpec })[]).map((rule) => ({
      name: rule.name!,
      from: rule.from!,
      to: rule.to ?? rule.from!,
      action: rule.action ?? 'copy',
      keys: rule.keys ?? defaults.keys,
      leases: rule.leases ?? defaults.leases,
      ...(rule.datacenters ? { datacenters: [...new Set(rule.datacenters)] } : {}),
      ...(rule.service || rule.action === 'service' ? { service: serviceSpec(rule.service ?? {}) } : {}),
    })),
  };
  if (!config.state.prefix.endsWith('/')) {
    throw new ConfigError(file, positionOfPath(document, ['state', 'prefix'], ctx), 'state.prefix', `"${config.state.prefix}" must end with "/" so that the state keys form their own folder`);
  }
  const parsed: ParsedConfig = { config, file, document, lineCounter };
  return { ...parsed, mapping: compileMapping(parsed) };
}

function positionOfPath(doc: Document, path: (string | number)[], ctx: ValidationContext) {
  const node = doc.getIn(path, true) as Node | undefined;
  const offset = node?.range?.[0];
  return offset === undefined ? undefined : ctx.lineCounter.linePos(offset);
}

/** Loads the configuration the way every command does; without a file, the empty configuration. */
export function loadConfig(options: { configFlag?: string; env: NodeJS.ProcessEnv; cwd: string; required?: boolean }): LoadedConfig {
  const file = findConfigFile(options.configFlag, options.env, options.cwd);
  if (!file) {
    if (options.required) {
      throw new UsageError('config_not_found', `No migration.yaml in ${options.cwd}, and neither --config nor MIGRATE_CONFIG names one.`, {
        hint: 'Pass --config <file>, set MIGRATE_CONFIG, or run `migrate init` to draft migration.yaml from an audit.',
      });
    }
    const parsed: ParsedConfig = { config: emptyConfig(), file: undefined, document: undefined, lineCounter: undefined };
    return { ...parsed, mapping: compileMapping(parsed) };
  }
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError('config_unreadable', `Cannot read ${file}: ${(err as Error).message}.`, { hint: 'Check the path and its permissions.' });
  }
  return parseConfig(text, file);
}
