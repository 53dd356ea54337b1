import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { WholeFile } from '../export/whole-file.js';
import { ServerError } from '../errors.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import { exportConsulRule, readEtcdRule } from './files.js';

const loaded = parseConfig('version: 1\nid: demo\nrules:\n  - { name: app, from: /app/, to: app/ }\n', 'migration.yaml');
const rule = loaded.mapping.rules.find((r) => r.name === 'app')!;

const KEYS = 2500;
const key = (i: number) => `/app/k${String(i).padStart(4, '0')}`;

/** 2,500 keys: three pages of the memory source's 1,000, as etcd would compact between pages. */
function source(): MemorySource {
  const s = new MemorySource();
  for (let i = 0; i < KEYS; i++) s.put(key(i), `v${i}`);
  return s;
}

describe('finalize --export-etcd when etcd compacts the revision it reads', () => {
  it('reads again at the current revision: the file holds the second read only, with a warning', async () => {
    const s = source();
    const first = (await s.status()).revision;
    const seen = s.compactDuringReads(1, 1, () => s.delete(key(0)));
    const dir = mkdtempSync(join(tmpdir(), 'files-'));
    const out = new WholeFile(join(dir, 'app-etcd.json'), { replace: false, flag: '--export-etcd' });
    const warnings: string[] = [];
    const read = await readEtcdRule(s, loaded.mapping, rule, out, (m) => warnings.push(m));
    expect(seen.compactions).toBe(1);
    expect(read).toMatchObject({ compactedAt: [first], revision: first + 1 });
    expect(read.keys.map(String)).toEqual(Array.from({ length: KEYS - 1 }, (_, i) => key(i + 1)));
    expect(warnings).toEqual([`etcd compacted revision ${first} while finalize read rule app; reading it again at the current revision`]);
    const written = JSON.parse(readFileSync(out.file, 'utf8')) as { key: string }[];
    expect(written.map((e) => Buffer.from(e.key, 'base64').toString())).toEqual(read.keys.map(String));
    expect(readdirSync(dir)).toEqual(['app-etcd.json']);
  });

  it('compacted at every read, it fails with etcd_compacted after three and leaves no file', async () => {
    const s = source();
    const seen = s.compactDuringReads(1, Infinity, () => s.put('/other/tick', 'x'));
    const dir = mkdtempSync(join(tmpdir(), 'files-'));
    const out = new WholeFile(join(dir, 'app-etcd.json'), { replace: false, flag: '--export-etcd' });
    await expect(readEtcdRule(s, loaded.mapping, rule, out, () => {})).rejects.toMatchObject({ code: 'etcd_compacted', exitCode: 3 });
    expect(seen.compactions).toBe(3);
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('the rollback point of a cutover', () => {
  it('a Consul read failing midway leaves no file that looks like a rollback point', async () => {
    const target = new MemoryTarget();
    for (let i = 0; i < 2500; i++) target.entries.set(`app/k${i}`, { key: `app/k${i}`, value: Buffer.from('v'), flags: 0, modifyIndex: 1 + i });
    const read = target.readEntries.bind(target);
    let reads = 0;
    target.readEntries = async (keys) => {
      if (++reads === 2) throw new ServerError('consul_unavailable', 'Consul went away');
      return read(keys);
    };
    const dir = mkdtempSync(join(tmpdir(), 'files-'));
    const out = new WholeFile(join(dir, 'rollback.json'), { replace: false, flag: '--rollback-file' });
    await expect(exportConsulRule(target, rule, out)).rejects.toMatchObject({ code: 'consul_unavailable' });
    expect(existsSync(out.file)).toBe(false);
    expect(readdirSync(dir)).toEqual([]);

    target.readEntries = read;
    const again = new WholeFile(join(dir, 'rollback.json'), { replace: false, flag: '--rollback-file' });
    expect(await exportConsulRule(target, rule, again)).toMatchObject({ keys: 2500 });
    expect((JSON.parse(readFileSync(again.file, 'utf8')) as unknown[]).length).toBe(2500);
  });
});
