import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { rawEtcd, repoRoot, serverEnv, uniquePrefix } from './support/harness.js';

describe('packaging', () => {
  it('npm pack produces a tarball that installs into an empty folder: migrate --version, --help by stage, npx migrate audit against the servers', async () => {
    const packDir = mkdtempSync(join(tmpdir(), 'migrate-pack-'));
    // --ignore-scripts: `prepack` would rebuild dist/ in place while other test files run the CLI from it
    // (one saw errors.js half written); the test command has just built it.
    execFileSync('npm', ['pack', '--ignore-scripts', '--pack-destination', packDir, '--loglevel=error'], { cwd: repoRoot, stdio: ['ignore', 'ignore', 'pipe'] });
    const [tarball] = readdirSync(packDir).filter((f) => f.endsWith('.tgz'));
    expect(tarball).toMatch(/^etcd-consul-migrate-\d+\.\d+\.\d+\.tgz$/);
    const listing = execFileSync('tar', ['-tzf', join(packDir, tarball!)], { encoding: 'utf8' });
    expect(listing).toContain('package/bin/migrate.js');
    expect(listing).toContain('package/dist/cli/main.js');
    expect(listing).not.toMatch(/\.test\.js/);
    expect(listing).toContain('package/dist/client/index.js');
    expect(listing).toContain('package/dist/client/index.d.ts');

    const app = mkdtempSync(join(tmpdir(), 'migrate-install-'));
    execFileSync('npm', ['init', '-y', '--loglevel=error'], { cwd: app, stdio: 'ignore' });
    execFileSync('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error', join(packDir, tarball!)], { cwd: app, stdio: ['ignore', 'ignore', 'pipe'] });
    const { version } = JSON.parse(execFileSync('node', ['-p', 'JSON.stringify(require("./package.json"))'], { cwd: repoRoot, encoding: 'utf8' })) as { version: string };
    for (const bin of ['migrate', 'etcd-consul-migrate']) {
      expect(execFileSync(join(app, 'node_modules', '.bin', bin), ['--version'], { encoding: 'utf8' }).trim()).toBe(version);
    }
    // `migrate --help` from the installed package groups the commands by stage, with examples.
    const help = execFileSync(join(app, 'node_modules', '.bin', 'migrate'), ['--help'], { encoding: 'utf8' });
    const readOnly = help.slice(help.indexOf('\nRead-only:\n'), help.indexOf('\nWrites:\n'));
    const writes = help.slice(help.indexOf('\nWrites:\n'), help.indexOf('\nRead-only, for example:'));
    for (const command of ['doctor', 'audit', 'init', 'plan', 'verify', 'status', 'export', 'acl']) expect(readOnly).toMatch(new RegExp(`\\n  ${command} `));
    for (const command of ['copy', 'dualrun', 'cutover', 'rollback', 'finalize', 'probe-latency']) expect(writes).toMatch(new RegExp(`\\n  ${command} `));
    expect(help).toContain('Writes, for example:');
    expect(help).toContain('  migrate audit ');
    // A reader that stops early ends the output quietly: no EPIPE stack, exit 0.
    const piped = spawnSync('bash', ['-c', `set -o pipefail; "${join(app, 'node_modules', '.bin', 'migrate')}" --help | true`], { encoding: 'utf8' });
    expect(piped.status, piped.stderr).toBe(0);
    expect(piped.stderr).toBe('');

    // `npx migrate audit` from the installed tarball, against the real test servers, with a small mapping.
    const prefix = uniquePrefix('pack');
    const etcd = rawEtcd();
    try {
      await etcd.put(`/${prefix}app/a`).value('1');
      await etcd.put(`/${prefix}app/b`).value('2');
    } finally {
      etcd.close();
    }
    writeFileSync(join(app, 'migration.yaml'), `version: 1\nid: ${prefix.slice(0, -1)}\nrules:\n  - { name: app, from: /${prefix}app/, to: ${prefix}app/ }\n`);
    const npx = (args: string[]) => spawnSync('npx', ['--no-install', ...args], { cwd: app, encoding: 'utf8', env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', CI: 'true', ...serverEnv() } });
    const auditHelp = npx(['migrate', 'audit', '--help']);
    expect(auditHelp.status, auditHelp.stderr).toBe(0);
    expect(auditHelp.stdout).toContain('Usage: migrate audit');
    const audit = npx(['migrate', 'audit', '--prefix', `/${prefix}`, '--format', 'json']);
    expect(audit.status, audit.stderr).toBe(0);
    const report = JSON.parse(audit.stdout) as { command: string; mode: string; totals: { keys: number }; rules: { rule: string; copyKeys: number }[] };
    expect(report).toMatchObject({ command: 'audit', mode: 'mapping', totals: { keys: 2 } });
    expect(report.rules.find((r) => r.rule === 'app')?.copyKeys).toBe(2);
    // The Node client resolves through the package's `exports`, from an application that installed the tarball.
    const client = execFileSync('node', ['--input-type=module', '-e', "const m = await import('etcd-consul-migrate/client'); console.log(typeof m.createKvClient, typeof m.KvClient)"], { cwd: app, encoding: 'utf8' });
    expect(client.trim()).toBe('function function');
  }, 180_000);
});
