/**
 * JSON Schema (draft-07) of `migrate verify --format json`: the envelope of
 * DESIGN §4 (`version`, `command`, `status`) around a {@link VerifyResult}.
 * `version` is the report schema version; a change that removes or renames a
 * field bumps it. Tests validate real output against this schema.
 */
const digest = {
  oneOf: [
    { type: 'null' },
    {
      type: 'object',
      additionalProperties: false,
      required: ['size', 'hash'],
      properties: { size: { type: 'integer', minimum: 0 }, hash: { type: 'string', pattern: '^[0-9a-f]{16}$' } },
    },
  ],
} as const;

const kinds = ['missing', 'extra', 'value', 'session', 'not-servable', 'instance', 'check', 'check-critical'] as const;
const byKind = {
  type: 'object',
  additionalProperties: false,
  required: [...kinds],
  properties: Object.fromEntries(kinds.map((k) => [k, { type: 'integer', minimum: 0 }])),
} as const;
const counts = { type: 'object', additionalProperties: { type: 'integer', minimum: 0 } } as const;
const cutProperties = {
  cut: { enum: ['checkpoint', 'immediate'] },
  revision: { type: 'integer', minimum: 0 },
  checkpoint: { type: ['integer', 'null'] },
  checkpointBy: { enum: ['copy', 'dualrun', null] },
  reason: { enum: ['dualrun-running', 'no-checkpoint', 'copy-checkpoint', 'dualrun-stopped'] },
  waitedMs: { type: 'number', minimum: 0 },
} as const;
const cutRequired = ['cut', 'revision', 'checkpoint', 'checkpointBy', 'reason', 'waitedMs'] as const;

export const VERIFY_REPORT_SCHEMA = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  $id: 'urn:etcd-consul-migrate:verify-report:1',
  title: 'migrate verify report',
  type: 'object',
  additionalProperties: false,
  required: ['version', 'command', 'status', 'migration', 'clean', 'cut', 'rounds', 'rules', 'totals', 'differences', 'differencesTotal', 'truncated', 'maxDiffs', 'recorded', 'notRecorded', 'source', 'target', 'warnings', 'durationMs'],
  properties: {
    version: { const: 1 },
    command: { const: 'verify' },
    status: { enum: ['ok', 'drift'], description: 'ok: every rule at parity or within its budget (exit 0); drift: exit 1' },
    migration: { type: 'string' },
    clean: { type: 'boolean' },
    cut: { type: 'object', additionalProperties: false, required: [...cutRequired], properties: cutProperties },
    rounds: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['round', ...cutRequired, 'checked', 'differences', 'settled', 'durationMs'],
        properties: {
          round: { type: 'integer', minimum: 1 },
          ...cutProperties,
          checked: { type: 'integer', minimum: 0 },
          differences: { type: 'integer', minimum: 0 },
          settled: { type: 'integer', minimum: 0 },
          durationMs: { type: 'number', minimum: 0 },
        },
      },
    },
    rules: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'action', 'from', 'to', 'keys', 'leases', 'status', 'sourceKeys', 'compared', 'targetKeys', 'differences', 'byKind', 'settled', 'budget', 'unmappable', 'leaseSkipped', 'readBack', 'unchecked'],
        properties: {
          name: { type: 'string' },
          action: { enum: ['copy', 'service'], description: 'copy: KV keys under to; service: instances in the catalog, counted in compared (the ones its keys make) and targetKeys (the ones in the catalog)' },
          from: { type: 'string' },
          to: { type: ['string', 'null'], description: 'null for a service rule, as are keys and leases' },
          keys: { enum: ['reject', 'escape', null] },
          leases: { enum: ['session', 'persist', 'skip', null] },
          status: { enum: ['parity', 'within-budget', 'drift'] },
          sourceKeys: { type: 'integer', minimum: 0 },
          compared: { type: 'integer', minimum: 0 },
          targetKeys: { type: 'integer', minimum: 0 },
          differences: { type: 'integer', minimum: 0 },
          byKind,
          settled: { type: 'integer', minimum: 0 },
          budget: { type: ['integer', 'null'], minimum: 0 },
          unmappable: counts,
          leaseSkipped: { type: 'integer', minimum: 0 },
          readBack: {
            type: 'object',
            additionalProperties: false,
            required: ['checked', 'failed'],
            properties: { checked: { type: 'integer', minimum: 0 }, failed: { type: 'integer', minimum: 0 } },
          },
          unchecked: { type: 'integer', minimum: 0 },
          owner: { enum: ['etcd', 'consul'] },
          lateWrites: { type: 'integer', minimum: 0 },
          appLocks: {
            type: 'object',
            additionalProperties: false,
            required: ['keys', 'examples'],
            description: 'keys of a cut-over rule an application locks in Consul with its own session (not drift): mirrored to etcd without a lease; examples: their etcd keys',
            properties: { keys: { type: 'integer', minimum: 0 }, examples: { type: 'array', items: { type: 'string' } } },
          },
        },
      },
    },
    totals: {
      type: 'object',
      additionalProperties: false,
      required: ['sourceKeys', 'compared', 'differences', 'settled', 'withinBudget', 'unmappable'],
      properties: Object.fromEntries(['sourceKeys', 'compared', 'differences', 'settled', 'withinBudget', 'unmappable'].map((k) => [k, { type: 'integer', minimum: 0 }])),
    },
    differences: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['rule', 'key', 'kind', 'reason', 'detail', 'sourceKey', 'etcd', 'consul'],
        properties: {
          rule: { type: 'string' },
          key: { type: 'string', description: 'the Consul key, escaped as formatKey does (\\xNN for non-printable bytes); for a service rule, the instance id (<id>@<node> for a second instance of an id)' },
          kind: { enum: [...kinds] },
          reason: { type: 'string' },
          detail: { type: 'string' },
          sourceKey: { type: ['string', 'null'], description: 'the etcd key the Consul key maps back to (for an extra, the one etcd lacks); null when no etcd key maps to it' },
          etcd: digest,
          consul: digest,
          datacenter: { type: 'string', description: 'the Consul datacenter of the difference (migrations that write to several)' },
        },
      },
    },
    differencesTotal: { type: 'integer', minimum: 0, description: 'every persistent difference; differences lists at most maxDiffs of them' },
    truncated: { type: 'boolean' },
    maxDiffs: { type: 'integer', minimum: 0 },
    recorded: { type: 'boolean' },
    notRecorded: { enum: ['no-record', 'no-state', 'mapping-changed', null], description: 'why the summary was not written: --no-record, no copy has run, or another mapping than the recorded one' },
    source: { type: 'object', additionalProperties: false, required: ['clusterId', 'version'], properties: { clusterId: { type: 'string' }, version: { type: 'string' } } },
    target: { type: 'object', additionalProperties: false, required: ['datacenter', 'version'], properties: { datacenter: { type: 'string' }, version: { type: 'string' } } },
    warnings: { type: 'array', items: { type: 'string' } },
    durationMs: { type: 'number', minimum: 0 },
  },
} as const;

const { version: _version, command: _command, status: _status, ...reportProperties } = VERIFY_REPORT_SCHEMA.properties;

/**
 * `migrate verify --format json` when the rules write to several datacenters
 * (issue 11): one entry per datacenter, with its own report (the single-
 * datacenter report without the envelope; every difference names the
 * datacenter) or, for a datacenter that could not be verified, the error.
 */
export const VERIFY_DATACENTERS_REPORT_SCHEMA = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  $id: 'urn:etcd-consul-migrate:verify-datacenters-report:1',
  title: 'migrate verify report, several datacenters',
  type: 'object',
  additionalProperties: false,
  required: ['version', 'command', 'status', 'migration', 'clean', 'datacenters'],
  properties: {
    version: { const: 1 },
    command: { const: 'verify' },
    status: { enum: ['ok', 'drift', 'unverified'], description: 'ok: every datacenter at parity (exit 0); drift: a datacenter drifts (exit 1); unverified: none drifts, but a datacenter could not be verified (exit 3)' },
    migration: { type: 'string' },
    clean: { type: 'boolean', description: 'every datacenter verified and at parity (or within budgets)' },
    datacenters: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['datacenter', 'status', 'report', 'error'],
        properties: {
          datacenter: { type: 'string' },
          status: { enum: ['parity', 'drift', 'unverified'] },
          report: {
            oneOf: [
              { type: 'null' },
              { type: 'object', additionalProperties: false, required: VERIFY_REPORT_SCHEMA.required.filter((k) => !['version', 'command', 'status'].includes(k)), properties: reportProperties },
            ],
          },
          error: {
            oneOf: [
              { type: 'null' },
              { type: 'object', additionalProperties: false, required: ['code', 'message'], properties: { code: { type: 'string' }, message: { type: 'string' }, hint: { type: 'string' } } },
            ],
          },
        },
      },
    },
  },
} as const;
