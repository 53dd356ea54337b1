import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config/load.js';
import { routeKey } from '../src/mapping/route.js';
import { ConsulTarget, kvPath } from '../src/stores/consul.js';
import { configDir, privateConsul, rawEtcd, repoRoot, runCli, serverEnv } from './support/harness.js';

const etcd = rawEtcd();
afterAll(() => etcd.close());

describe('migrate export (real servers)', () => {
  it('writes consul kv import JSON that round-trips through Consul byte for byte', async () => {
    const id = `export-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const yaml = `version: 1\nid: ${id}\nrules:\n  - { name: app, from: ${root}/app/, to: ${id}/app/ }\n  - { name: legacy, from: ${root}/legacy/, to: ${id}/legacy/, keys: escape }\n  - { name: locks, from: ${root}/locks/, to: ${id}/locks/, leases: skip }\n`;
    const dir = configDir(yaml);
    const lease = etcd.lease(60);
    await lease.grant();
    await etcd.put(`${root}/app/binary`).value(Buffer.from(Array.from({ length: 256 }, (_, i) => i)));
    await etcd.put(`${root}/app/empty`).value(Buffer.alloc(0));
    await etcd.put(`${root}/app/text`).value('hello');
    await etcd.put(`${root}/app/too-big`).value(Buffer.alloc(600_000, 1));
    await etcd.put(`${root}/app//double`).value('x');
    await etcd.put(`${root}/legacy//double`).value('escaped');
    await lease.put(`${root}/app/leased`).value('plain in the export');
    await lease.put(`${root}/locks/job`).value('skipped');
    try {
      const out = join(dir, 'kv.json');
      const run = await runCli(['export', '--out', out, '--format', 'json'], { cwd: dir, env: serverEnv() });
      expect(run.code, run.stderr).toBe(0);
      const result = JSON.parse(run.stdout);
      expect(result).toMatchObject({ exported: 5, leasedAsPlain: 1, skipped: { app: { 'value-too-large': 1, 'empty-segment': 1 }, locks: { 'lease-skip': 1 } } });
      expect(statSync(out).mode & 0o777).toBe(0o600);
      expect(run.stdout).not.toContain('aGVsbG8=');
      const entries = JSON.parse(readFileSync(out, 'utf8')) as { key: string; flags: number; value: string }[];
      expect(entries.map((e) => e.key).sort()).toEqual([`${id}/app/binary`, `${id}/app/empty`, `${id}/app/leased`, `${id}/app/text`, `${id}/legacy/~2Fdouble`].sort());
      // To standard output through a pipe (`migrate export --out /dev/stdout | consul kv import -`): the same
      // document, whole on stdout, with what was done on stderr.
      const piped = await runCli(['export', '--out', '/dev/stdout'], { cwd: dir, env: serverEnv() });
      expect(piped.code, piped.stderr).toBe(0);
      expect((JSON.parse(piped.stdout) as { key: string }[]).map((e) => e.key).sort()).toEqual(entries.map((e) => e.key).sort());
      expect(piped.stderr).toContain('Exported 5 key(s)');

      // Import it the way `consul kv import` does: one PUT per entry with its flags.
      const own = await privateConsul();
      const target = new ConsulTarget({ address: own.address });
      try {
        for (const e of entries) await target.http.request({ method: 'PUT', path: kvPath(e.key), query: { flags: e.flags }, body: Buffer.from(e.value, 'base64') });
        const mapping = parseConfig(yaml, 'migration.yaml').mapping;
        const kvs = (await etcd.getAll().prefix(`${root}/`).exec()).kvs;
        let compared = 0;
        for (const kv of kvs) {
          const route = routeKey(mapping, kv.key, { valueBytes: kv.value.length });
          if (route.kind !== 'mapped' || (route.rule.leases === 'skip' && kv.lease !== '0')) continue;
          expect((await target.readKey(route.target))?.value.equals(kv.value), route.target).toBe(true);
          compared++;
        }
        expect(compared).toBe(5);
        expect((await target.listKeys(`${id}/`)).length).toBe(5);
      } finally {
        target.close();
        await own.stop();
      }
    } finally {
      lease.release();
    }
  });

  it('--out /dev/stdout whose reader goes away first (`| head`): said on stderr, exit 141, not a success', async () => {
    const id = `export-pipe-${randomBytes(3).toString('hex')}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: app, from: /${id}/app/, to: ${id}/app/ }\n`);
    const value = Buffer.alloc(2048, 7);
    for (let i = 0; i < 4000; i += 500) {
      await etcd.if(`/${id}/app/k0`, 'Mod', '>', -1).then(...Array.from({ length: 500 }, (_, j) => etcd.put(`/${id}/app/k${i + j}`).value(value))).commit();
    }
    const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'export', '--out', '/dev/stdout'], { cwd: dir, env: { PATH: process.env.PATH ?? '', ...serverEnv() }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c));
    // The reader takes the first bytes and goes away, as `| head -c 100` does.
    child.stdout.once('data', () => child.stdout.destroy());
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    expect(code, stderr).toBe(141);
    expect(stderr).toContain('error[file_unwritable]: standard output was closed before the export was whole');
    expect(stderr).not.toContain('Exported');
  });

  it('an export that fails leaves no partial file, and an earlier export as it was', async () => {
    const id = `export-fail-${randomBytes(3).toString('hex')}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: app, from: /${id}/app/, to: ${id}/app/ }\n`);
    const out = join(dir, 'kv.json');
    writeFileSync(out, '[{"key":"earlier","flags":0,"value":""}]\n');
    // A port where nothing answers: etcd is unreachable.
    const closed = await new Promise<number>((resolve) => {
      const server = createServer().listen(0, '127.0.0.1', () => {
        const { port } = server.address() as { port: number };
        server.close(() => resolve(port));
      });
    });
    const run = await runCli(['export', '--out', out], { cwd: dir, env: serverEnv({ ETCDCTL_ENDPOINTS: `http://127.0.0.1:${closed}` }) });
    expect(run.code, run.stderr).toBe(3);
    expect(run.stderr).toContain('error[etcd_unreachable]');
    expect(readFileSync(out, 'utf8')).toBe('[{"key":"earlier","flags":0,"value":""}]\n');
    expect(readdirSync(dir).sort()).toEqual(['kv.json', 'migration.yaml']);
  });
});
