import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3, Range } from 'etcd3';
import { leaseHex, loadDataset, placePrefix, readDataset, scopePrefixes, startTraffic, type Dataset } from '../../fixtures/loader.js';
import { startEtcd } from '../../scripts/local-servers.js';
import { repoRoot, servers } from './harness.js';

/**
 * Runs a scenario of `fixtures/<name>/` the way a user would: the dataset
 * loaded into a real etcd under a base prefix unique to the run, the mapping
 * file with `{{prefix}}` filled in, then `bin/migrate.js audit` (or `plan`)
 * with `--format json`. The report is normalized (no timings, revisions,
 * lease ids or the base prefix) for comparison with `expected-<command>.json`.
 */
export interface ScenarioRun {
  code: number;
  stdout: string;
  stderr: string;
  /** The parsed JSON document on stdout (undefined when there is none). */
  report: Record<string, unknown> | undefined;
  base: string;
  leases: Map<string, string>;
  dataset: Dataset;
  /** Writes made by the live traffic during `--sample`. */
  trafficWrites: number;
}

export const fixturesDir = join(repoRoot, 'fixtures');

export async function runScenario(name: string, command: 'audit' | 'plan' = 'audit'): Promise<ScenarioRun> {
  const dir = join(fixturesDir, name);
  const dataset = readDataset(dir);
  const base = `t-${randomBytes(4).toString('hex')}`;
  const dedicated = dataset.auth ? await startEtcd() : undefined;
  const endpoint = dedicated?.endpoint ?? servers().etcdEndpoint;
  const client = new Etcd3({ hosts: endpoint });
  const cwd = mkdtempSync(join(tmpdir(), `fixture-${name}-`));
  let loaded: Awaited<ReturnType<typeof loadDataset>> | undefined;
  try {
    loaded = await loadDataset(client, dataset, base);
    const env: Record<string, string> = { ETCDCTL_ENDPOINTS: endpoint, CONSUL_HTTP_ADDR: servers().consulAddress };
    if (dataset.auth) Object.assign(env, await restrictEtcd(client, dataset.auth.readPrefixes.map((p) => placePrefix(p, base))));
    const args = [command, '--format', 'json', '--progress', 'json'];
    const mapping = join(dir, 'migration.yaml');
    if (existsSync(mapping)) {
      writeFileSync(join(cwd, 'migration.yaml'), readFileSync(mapping, 'utf8').replaceAll('{{prefix}}', base));
      args.push('--config', 'migration.yaml');
    }
    if (command === 'audit') args.push(...(dataset.auditArgs ?? []));
    // A dedicated etcd holds nothing else: audit it whole (the RBAC fallback needs that).
    if (!dataset.auth) for (const prefix of scopePrefixes(dataset, base)) args.push('--prefix', prefix);
    let stopTraffic: (() => Promise<number>) | undefined;
    const run = await spawnCli(args, cwd, env, () => {
      // Traffic starts once the audit has pinned its revision (its `pinned` event, or a first progress
      // event), so the inventory stays deterministic and the sample sees the traffic from its start.
      if (dataset.traffic && command === 'audit') stopTraffic = startTraffic(client, dataset.traffic, base);
    });
    const trafficWrites = stopTraffic ? await stopTraffic() : 0;
    let report: Record<string, unknown> | undefined;
    try {
      report = run.stdout.trim() ? (JSON.parse(run.stdout) as Record<string, unknown>) : undefined;
    } catch {
      report = undefined;
    }
    return { ...run, report, base, leases: loaded.leases, dataset, trafficWrites };
  } finally {
    await loaded?.stop().catch(() => undefined);
    client.close();
    rmSync(cwd, { recursive: true, force: true });
    await dedicated?.stop();
  }
}

/**
 * Turns authentication on, with a user whose role may read only `prefixes`;
 * returns the environment that makes the CLI log in as that user.
 */
async function restrictEtcd(client: Etcd3, prefixes: string[]): Promise<Record<string, string>> {
  await client.role('root').create();
  await client.user('root').create('root-password');
  await client.user('root').addRole('root');
  await client.role('auditor').create();
  for (const prefix of prefixes) await client.role('auditor').grant({ permission: 'Read', range: Range.prefix(prefix) });
  await client.user('auditor').create('auditor-password');
  await client.user('auditor').addRole('auditor');
  await client.auth.authEnable();
  return { ETCDCTL_USER: 'auditor', ETCDCTL_PASSWORD: 'auditor-password' };
}

function spawnCli(args: string[], cwd: string, env: Record<string, string>, onPinned: () => void): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), ...args], {
      cwd,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', CI: 'true', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let pinned = false;
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString('utf8');
      if (!pinned && /"phase":"pinned"|"event":"progress"/.test(stderr)) {
        pinned = true;
        onPinned();
      }
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr });
    });
  });
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Fields that depend on the run (timings, revisions, addresses), dropped wherever they appear. */
const RUN_SPECIFIC = new Set(['source', 'scan', 'configFile', 'newestModRevision', 'revision', 'ages', 'durationMs', 'spilledRuns', 'at', 'basis', 'limitsBasis', 'probe']);

/**
 * The report without run-specific values: the base prefix becomes
 * `{{prefix}}`, lease ids `<lease:name>`, and timings, revisions and
 * addresses are dropped. The live sample keeps only which prefixes were written.
 */
export function normalizeReport(report: Record<string, unknown>, run: Pick<ScenarioRun, 'base' | 'leases' | 'code'>): Json {
  const replacements: [string, string][] = [[run.base, '{{prefix}}']];
  for (const [name, id] of run.leases) {
    replacements.push([id, `<lease:${name}>`]);
    replacements.push([leaseHex(id), `<lease-hex:${name}>`]);
  }
  const text = (s: string) => replacements.reduce((out, [from, to]) => out.split(from).join(to), s);
  const walk = (value: unknown): Json => {
    if (typeof value === 'string') return text(value);
    if (Array.isArray(value)) return value.map((v) => walk(v));
    if (value && typeof value === 'object') {
      const out: Record<string, Json> = {};
      for (const [k, v] of Object.entries(value)) {
        if (RUN_SPECIFIC.has(k)) continue;
        out[k] = walk(v);
      }
      return out;
    }
    return value as Json;
  };
  const doc = walk(report) as Record<string, Json>;
  // The target's op limit depends on the Consul version under test (64 before 1.14, 128 after).
  if (doc.limits && typeof doc.limits === 'object' && !Array.isArray(doc.limits)) {
    const limits = doc.limits as Record<string, Json>;
    if (!isPinnedLimit(report)) {
      delete limits.txnMaxOps;
      delete limits.revisionTxnOps;
    }
  }
  if (doc.sample && typeof doc.sample === 'object' && !Array.isArray(doc.sample)) {
    const sample = doc.sample as Record<string, Json>;
    const prefixes = (sample.prefixes as { prefix: string; replicatedWrites: number }[]).filter((p) => p.replicatedWrites > 0).map((p) => p.prefix).sort();
    doc.sample = { prefixesWritten: prefixes, errors: sample.errors ?? [] };
  }
  for (const finding of (doc.findings as Record<string, Json>[] | undefined) ?? []) {
    if (finding.code === 'write_rate_high') {
      finding.examples = (finding.examples as Record<string, Json>[]).map((e) => ({ prefix: e.prefix ?? null }));
    }
    if (finding.code === 'atomic_group_oversize' && !isPinnedLimit(report)) {
      finding.examples = (finding.examples as Record<string, Json>[]).map(({ detail: _detail, ...rest }) => rest);
    }
  }
  if (doc.atomicGroups && typeof doc.atomicGroups === 'object' && !isPinnedLimit(report)) delete (doc.atomicGroups as Record<string, Json>).splitAtTarget;
  return { exitCode: run.code, ...doc };
}

/** Whether the mapping pins the op limit (then it does not depend on the Consul under test). */
function isPinnedLimit(report: Record<string, unknown>): boolean {
  const basis = (report.limits as { basis?: string } | undefined)?.basis ?? '';
  return basis.includes('migration.yaml');
}

/** The error envelope of a refused configuration, without the run's paths. */
export function normalizeError(report: Record<string, unknown> | undefined, code: number): Json {
  const error = (report?.error ?? {}) as Record<string, unknown>;
  return { exitCode: code, status: (report?.status as string) ?? null, error: { code: (error.code as string) ?? null, path: (error.path as string) ?? null, line: (error.line as number) ?? null, column: (error.column as number) ?? null } };
}

/** Compares with `fixtures/<name>/<file>`, or (re)writes it when UPDATE_FIXTURES=1. */
export function expectedFile(name: string, file: string, actual: Json): Json {
  const path = join(fixturesDir, name, file);
  if (process.env.UPDATE_FIXTURES === '1') {
    writeFileSync(path, `${JSON.stringify(actual, null, 2)}\n`);
    return actual;
  }
  if (!existsSync(path)) throw new Error(`${path} is missing: run \`UPDATE_FIXTURES=1 npx vitest run --project integration test/audit-fixtures.test.ts\`, review the file, and commit it`);
  return JSON.parse(readFileSync(path, 'utf8')) as Json;
}
