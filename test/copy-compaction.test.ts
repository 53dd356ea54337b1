import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Etcd3 } from 'etcd3';
import { startEtcd } from '../scripts/local-servers.js';
import { parseConfig } from '../src/config/load.js';
import { checkParity } from './support/parity.js';
import { configDir, consulTarget, runCli, serverEnv } from './support/harness.js';
import { eventually } from './support/dualrun.js';

const KEYS = 2000;
const key = (i: number) => `k${String(i).padStart(4, '0')}`;

describe('copy while etcd compacts its pinned revision (real servers)', () => {
  it('copies again at the current revision: exit 0, parity with etcd there, and the keys it wrote that etcd deleted meanwhile are gone from Consul', async () => {
    // Its own etcd: compacting the shared one would compact the revisions other test files are reading at.
    const own = await startEtcd();
    const etcd = new Etcd3({ hosts: own.endpoint });
    const target = consulTarget();
    const id = `compacted-${randomBytes(3).toString('hex')}`;
    const yaml = `version: 1\nid: ${id}\nrules:\n  - { name: app, from: /${id}/app/, to: ${id}/app/, leases: session }\n`;
    const dir = configDir(yaml);
    const env = serverEnv({ ETCDCTL_ENDPOINTS: own.endpoint });
    try {
      for (let i = 0; i < KEYS; i += 500) {
        await etcd.if(`/${id}/app/${key(i)}`, 'Mod', '>', -1).then(...Array.from({ length: 500 }, (_, j) => etcd.put(`/${id}/app/${key(i + j)}`).value(`v1-${i + j}`))).commit();
      }
      const lease = etcd.lease(60);
      await lease.put(`/${id}/app/leased`).value('held');
      // A key under the target prefix that no etcd key produces, there before the copy: never the copy's to delete.
      await target.applyTxn([{ verb: 'set', key: `${id}/app/foreign`, value: Buffer.from('theirs') }]);
      const pinned = Number((await etcd.maintenance.status()).header.revision);

      // Throttled, one txn at a time: the read stays a few pages ahead of the writes, so the compaction lands while the copy is still reading.
      const copy = runCli(['copy', '--format', 'json', '--rate', '500', '--concurrency', '1', '--page-keys', '100'], { cwd: dir, env, timeoutMs: 120_000 });
      await eventually('the copy has written the first keys', async () => (await target.listKeys(`${id}/app/`)).length >= 300, 30_000);
      for (let i = 0; i < 10; i++) await etcd.delete().key(`/${id}/app/${key(i)}`);
      await etcd.put(`/${id}/app/${key(20)}`).value('v2');
      await etcd.put(`/${id}/app/added`).value('new');
      const compactedTo = Number((await etcd.put(`/${id}/app/${key(KEYS - 1)}`).value('v2').exec()).header.revision);
      await etcd.kv.compact({ revision: compactedTo, physical: true });
      const run = await copy;

      expect(run.code, run.stderr).toBe(0);
      expect(run.stderr).toContain(`etcd compacted revision ${pinned} while the copy read it`);
      const result = JSON.parse(run.stdout) as { revision: number; compactedAt: number[]; rules: { deletedStale: number; extraneous: number }[]; sessions: { created: number } };
      expect(result.compactedAt).toEqual([pinned]);
      expect(result.revision).toBeGreaterThanOrEqual(compactedTo);
      expect(result.rules[0]).toMatchObject({ deletedStale: 10, extraneous: 1 });
      expect(result.sessions.created).toBe(1);
      const parity = await checkParity(etcd, target, parseConfig(yaml, 'migration.yaml').mapping, id);
      expect(parity).toMatchObject({ missing: [], wrongValue: [], wrongSession: [], notServable: [] });
      expect(parity.extra).toEqual([`${id}/app/foreign`]);
      expect(parity.checked).toBe(KEYS - 10 + 2);
      expect((await target.readKey(`${id}/app/${key(20)}`))?.value.toString()).toBe('v2');
      await lease.revoke();
    } finally {
      etcd.close();
      target.close();
      await own.stop();
    }
  }, 120_000);
});
