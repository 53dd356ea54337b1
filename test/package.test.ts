import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './support/harness.js';

describe('packaging', () => {
  it('npm pack produces a tarball that installs into an empty folder and runs migrate --version', () => {
    const packDir = mkdtempSync(join(tmpdir(), 'migrate-pack-'));
    execFileSync('npm', ['pack', '--pack-destination', packDir, '--loglevel=error'], { cwd: repoRoot, stdio: ['ignore', 'ignore', 'pipe'] });
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
    expect(execFileSync(join(app, 'node_modules', '.bin', 'migrate'), ['--help'], { encoding: 'utf8' })).toContain('doctor');
    // The Node client resolves through the package's `exports`, from an application that installed the tarball.
    const client = execFileSync('node', ['--input-type=module', '-e', "const m = await import('etcd-consul-migrate/client'); console.log(typeof m.createKvClient, typeof m.KvClient)"], { cwd: app, encoding: 'utf8' });
    expect(client.trim()).toBe('function function');
  }, 180_000);
});
