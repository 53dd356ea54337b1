import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { resolveConnections } from '../config/connections.js';
import { loadConfig } from '../config/load.js';
import { DualRunMetrics } from '../dualrun/metrics.js';
import { createProgram } from './main.js';
import { captureIo } from '../../test/support/capture-io.js';
import { generateTls } from '../../scripts/local-servers.js';

/**
 * deploy/kubernetes must run the tool as it is: every manifest is parsed, and
 * what the pods pass to `migrate` (args, environment, files, ports, probes)
 * is checked against the CLI's own definition, the configuration loader, the
 * connection resolver and the dual-run's HTTP endpoint.
 */
const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DIR = join(repoRoot, 'deploy', 'kubernetes');

// Manifests are free-form YAML; the assertions say what each field must be.
type Obj = Record<string, any>;

const manifests: { file: string; doc: Obj }[] = readdirSync(DIR)
  .filter((f) => f.endsWith('.yaml'))
  .flatMap((file) =>
    parseAllDocuments(readFileSync(join(DIR, file), 'utf8')).map((document) => {
      if (document.errors.length > 0) throw new Error(`${file}: ${document.errors[0]!.message}`);
      return { file, doc: document.toJS() as Obj };
    }),
  );

function only(kind: string, name?: string): Obj {
  const found = manifests.filter((m) => m.doc.kind === kind && (name === undefined || m.doc.metadata?.name === name));
  expect(found.length, `one ${kind}${name ? ` ${name}` : ''}`).toBe(1);
  return found[0]!.doc;
}


/** Parses argv with the real program, every action replaced: throws what the CLI would refuse. */
async function parseOnly(argv: string[]): Promise<Command> {
  const { program } = createProgram(captureIo());
  let ran: Command | undefined;
  for (const command of program.commands) command.action(() => void (ran = command));
  await program.parseAsync(argv, { from: 'user' });
  if (!ran) throw new Error(`no command ran for ${argv.join(' ')}`);
  return ran;
}

/** The environment variables the tool reads: every `env.NAME` in the configuration loader and the connection resolver. */
function variablesTheToolReads(): Set<string> {
  const names = new Set<string>();
  for (const file of ['connections.ts', 'load.ts']) {
    for (const match of readFileSync(join(repoRoot, 'src', 'config', file), 'utf8').matchAll(/\benv\.([A-Z][A-Z0-9_]*)/g)) names.add(match[1]!);
  }
  return names;
}

const matches = (selector: Record<string, string>, labels: Record<string, string>) => Object.entries(selector).every(([k, v]) => labels[k] === v);

const secrets = new Map<string, Record<string, string>>(manifests.filter((m) => m.doc.kind === 'Secret').map((m) => [m.doc.metadata.name, m.doc.stringData ?? {}]));
const configMaps = new Map<string, Record<string, string>>(manifests.filter((m) => m.doc.kind === 'ConfigMap').map((m) => [m.doc.metadata.name, m.doc.data ?? {}]));

/** A file a container sees: the ConfigMap or Secret key behind a path under a volume mount. */
function fileAt(pod: Obj, container: Obj, path: string): { source: 'configMap' | 'secret'; name: string; key: string } {
  for (const mount of container.volumeMounts ?? []) {
    const prefix = `${mount.mountPath.replace(/\/$/, '')}/`;
    if (!path.startsWith(prefix)) continue;
    const relative = path.slice(prefix.length);
    const volume = (pod.volumes as Obj[]).find((v) => v.name === mount.name)!;
    expect(volume, `volume ${mount.name}`).toBeDefined();
    const source = volume.configMap ? 'configMap' : 'secret';
    const ref = volume.configMap ?? volume.secret;
    const name = ref.name ?? ref.secretName;
    const item = ref.items ? (ref.items as Obj[]).find((i) => i.path === relative) : { key: relative };
    expect(item, `${path}: no item ${relative} in volume ${mount.name}`).toBeDefined();
    return { source, name, key: item!.key };
  }
  throw new Error(`${path} is not under any volume mount of ${container.name}`);
}

let ca: string | undefined;
/** A CA certificate made for the test (openssl), once. */
function realCa(): string {
  ca ??= generateTls().ca;
  return ca;
}

/** The container's environment as the tool will see it, files written under `root`, and what was checked. */
function environmentOf(pod: Obj, container: Obj, root: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const from of container.envFrom ?? []) {
    const data = configMaps.get(from.configMapRef.name);
    expect(data, `ConfigMap ${from.configMapRef.name}`).toBeDefined();
    Object.assign(env, data);
  }
  for (const variable of container.env ?? []) {
    if (variable.valueFrom) {
      const ref = variable.valueFrom.secretKeyRef;
      expect(ref, `${variable.name} comes from a Secret`).toBeDefined();
      expect(secrets.get(ref.name)?.[ref.key], `${variable.name}: Secret ${ref.name} has no key ${ref.key}`).toBeDefined();
      env[variable.name] = secrets.get(ref.name)![ref.key];
    } else {
      env[variable.name] = variable.value;
    }
  }
  // Every path-valued variable names a file mounted from a Secret that holds that key.
  for (const name of ['ETCDCTL_CACERT', 'ETCDCTL_CERT', 'ETCDCTL_KEY', 'CONSUL_HTTP_TOKEN_FILE', 'CONSUL_CACERT', 'CONSUL_CLIENT_CERT', 'CONSUL_CLIENT_KEY']) {
    const path = env[name];
    if (!path) continue;
    const file = fileAt(pod, container, path);
    expect(file.source, `${name} is a Secret`).toBe('secret');
    const content = secrets.get(file.name)?.[file.key];
    expect(content, `${name}: Secret ${file.name} has no key ${file.key}`).toBeDefined();
    const local = join(root, path);
    mkdirSync(dirname(local), { recursive: true });
    // The example Secrets hold a placeholder CA, which the tool refuses (tls_file_invalid): a real one in its place.
    writeFileSync(local, /-----BEGIN CERTIFICATE-----[\s\S]*REPLACE-ME/.test(content!) ? readFileSync(realCa()) : content!);
    env[name] = local;
  }
  return env;
}

interface Workload {
  kind: string;
  pod: Obj;
  labels: Record<string, string>;
  container: Obj;
}

function workload(kind: string): Workload {
  const doc = only(kind);
  const template = kind === 'CronJob' ? doc.spec.jobTemplate.spec.template : doc.spec.template;
  const containers = template.spec.containers as Obj[];
  expect(containers).toHaveLength(1);
  return { kind, pod: template.spec, labels: template.metadata.labels, container: containers[0]! };
}

const dualrun = workload('Deployment');
const verify = workload('CronJob');
const root = mkdtempSync(join(tmpdir(), 'migrate-k8s-'));

describe('deploy/kubernetes', () => {
  it('every file parses, and kustomization.yaml lists files that exist', () => {
    expect(manifests.length).toBeGreaterThan(5);
    const kustomization = only('Kustomization');
    for (const file of kustomization.resources as string[]) expect(readdirSync(DIR)).toContain(file);
    // The Secrets are an example, never applied with placeholder values.
    expect(kustomization.resources).not.toContain('secrets.example.yaml');
  });

  it.skipIf(spawnSync('kubectl', ['version', '--client']).status !== 0)('kubectl kustomize builds it and sets the image', () => {
    const built = execFileSync('kubectl', ['kustomize', DIR], { encoding: 'utf8' });
    const kinds = parseAllDocuments(built).map((d) => (d.toJS() as Obj).kind);
    expect(kinds).toEqual(expect.arrayContaining(['Deployment', 'CronJob', 'ConfigMap', 'Service', 'PodDisruptionBudget', 'ServiceAccount']));
    expect(built).not.toMatch(/image: etcd-consul-migrate:/);
  });

  for (const w of [dualrun, verify]) {
    describe(`${w.kind} (${w.container.name})`, () => {
      it('runs migrate with arguments the CLI accepts, and --config names the mounted ConfigMap key', async () => {
        expect(w.container.command).toEqual(['migrate']);
        const command = await parseOnly(w.container.args);
        expect(command.name()).toBe(w.kind === 'Deployment' ? 'dualrun' : 'verify');
        const config = command.opts().config as string;
        expect(config).toBeDefined();
        const file = fileAt(w.pod, w.container, config);
        expect(file.source).toBe('configMap');
        expect(configMaps.get(file.name)?.[file.key]).toBeDefined();
      });

      it('sets only environment variables the tool reads, and they resolve to working connections', async () => {
        const known = variablesTheToolReads();
        const env = environmentOf(w.pod, w.container, join(root, w.kind));
        for (const name of Object.keys(env)) expect(known, `${name} is read by the tool`).toContain(name);
        const command = await parseOnly(w.container.args);
        const configFile = fileAt(w.pod, w.container, command.opts().config as string);
        const local = join(root, w.kind, 'migration.yaml');
        writeFileSync(local, configMaps.get(configFile.name)![configFile.key]!);
        const loaded = loadConfig({ configFlag: local, env, cwd: root, required: true });
        expect(loaded.config.rules.length).toBeGreaterThan(0);
        const connections = resolveConnections(loaded.config, command.opts(), env, root);
        expect(connections.source.endpoints.every((e) => e.startsWith('https://'))).toBe(true);
        expect(connections.source.tls?.ca).toBeDefined();
        expect(connections.source.auth?.username).toBe('migrator');
        expect(connections.target.address).toMatch(/^https:\/\//);
        expect(connections.target.token).toBeDefined();
        expect(connections.origins['consul.token']).toBe('env');
        expect(connections.target.tls?.ca).toBeDefined();
      });

      it('runs as non-root on a read-only root file system, with requests and limits', () => {
        expect(w.pod.securityContext.runAsNonRoot).toBe(true);
        expect(w.pod.securityContext.runAsUser).toBeGreaterThan(0);
        expect(w.pod.automountServiceAccountToken).toBe(false);
        expect(w.container.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
        for (const what of ['requests', 'limits']) expect(Object.keys(w.container.resources[what]).sort()).toEqual(['cpu', 'memory']);
      });
    });
  }

  describe('the dual-run', () => {
    const deployment = only('Deployment');
    let metrics: DualRunMetrics;
    let base: string;
    beforeAll(async () => {
      // The tool's own endpoint, as the pod serves it (no servers needed: it answers before the dual-run starts).
      metrics = new DualRunMetrics();
      base = `http://${await metrics.listen('127.0.0.1:0')}`;
    });
    afterAll(() => metrics.close());

    it('has two or more replicas with --ha, and a selector that matches its pods', async () => {
      const command = await parseOnly(dualrun.container.args);
      expect(command.opts().ha).toBe(true);
      expect(deployment.spec.replicas).toBeGreaterThanOrEqual(2);
      expect(matches(deployment.spec.selector.matchLabels, dualrun.labels)).toBe(true);
      expect(deployment.spec.strategy.rollingUpdate.maxUnavailable).toBe(0);
    });

    it('serves metrics on the port the container, the annotations, the Service and the ServiceMonitor name', async () => {
      const command = await parseOnly(dualrun.container.args);
      const port = Number(/(\d+)$/.exec(command.opts().metricsAddr as string)![1]);
      const containerPort = (dualrun.container.ports as Obj[]).find((p) => p.name === 'metrics')!;
      expect(containerPort.containerPort).toBe(port);
      const annotations = only('Deployment').spec.template.metadata.annotations;
      expect(annotations).toMatchObject({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': String(port), 'prometheus.io/path': '/metrics' });
      const service = only('Service');
      expect(matches(service.spec.selector, dualrun.labels)).toBe(true);
      expect(matches(service.spec.selector, verify.labels)).toBe(false);
      const servicePort = (service.spec.ports as Obj[]).find((p) => p.name === 'metrics')!;
      expect([containerPort.name, containerPort.containerPort]).toContain(servicePort.targetPort);
      const monitor = only('ServiceMonitor');
      expect(matches(monitor.spec.selector.matchLabels, service.metadata.labels)).toBe(true);
      expect(monitor.spec.endpoints).toEqual([expect.objectContaining({ port: 'metrics', path: '/metrics' })]);
      const scraped = await fetch(`${base}${monitor.spec.endpoints[0].path}`);
      expect(scraped.status).toBe(200);
      expect(await scraped.text()).toContain('migrate_dualrun_lag_seconds');
    });

    it('probes readiness on /healthz and liveness on a path the tool serves, on the metrics port', async () => {
      const { readinessProbe, livenessProbe } = dualrun.container;
      expect(readinessProbe.httpGet).toEqual({ path: '/healthz', port: 'metrics' });
      expect(livenessProbe.httpGet.port).toBe('metrics');
      // Not ready before the dual-run has reported (starting), a JSON status all the same.
      const ready = await fetch(`${base}${readinessProbe.httpGet.path}`);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toEqual({ status: 'starting' });
      // Alive whatever the dual-run's state: a catching-up leader must not be restarted.
      expect((await fetch(`${base}${livenessProbe.httpGet.path}`)).status).toBe(200);
      expect(livenessProbe.periodSeconds * livenessProbe.failureThreshold).toBeGreaterThanOrEqual(60);
    });

    it('gives a clean stop time: a txn and the lock release, each up to the 30 s Consul request timeout', () => {
      expect(dualrun.pod.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(60);
    });

    it('has a PodDisruptionBudget keeping one replica, selecting the dual-run pods only', () => {
      const pdb = only('PodDisruptionBudget');
      expect(pdb.spec.minAvailable).toBe(1);
      expect(pdb.spec.minAvailable).toBeLessThan(deployment.spec.replicas);
      expect(matches(pdb.spec.selector.matchLabels, dualrun.labels)).toBe(true);
      expect(matches(pdb.spec.selector.matchLabels, verify.labels)).toBe(false);
    });
  });

  describe('the verify CronJob', () => {
    const cronjob = only('CronJob');
    it('reports in a machine format, never overlaps, and fails at once only on exit codes a retry cannot change', async () => {
      const command = await parseOnly(verify.container.args);
      expect(['json', 'junit']).toContain(command.opts().format);
      expect(cronjob.spec.concurrencyPolicy).toBe('Forbid');
      expect(verify.pod.restartPolicy).toBe('Never');
      const [rule] = cronjob.spec.jobTemplate.spec.podFailurePolicy.rules as Obj[];
      expect(rule).toMatchObject({ action: 'FailJob', onExitCodes: { containerName: verify.container.name, operator: 'In', values: [1, 2] } });
    });
  });

  it('the ServiceAccount the pods use exists', () => {
    const account = only('ServiceAccount').metadata.name;
    for (const w of [dualrun, verify]) expect(w.pod.serviceAccountName).toBe(account);
  });
});
