import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { ensureMeta, readState, statePaths, type StateMeta } from '../src/state/state.js';
import type { MigrateError } from '../src/errors.js';
import { consulTarget, etcdSource } from './support/harness.js';

const target = consulTarget();
const source = etcdSource();
afterAll(() => {
  target.close();
  source.close();
});

async function rejection(p: Promise<unknown>): Promise<MigrateError> {
  try {
    await p;
  } catch (err) {
    return err as MigrateError;
  }
  throw new Error('expected a rejection');
}

describe('state meta and the identity check (real Consul)', () => {
  it('records meta once and refuses another etcd cluster (exit 4) or a newer schema (exit 2)', async () => {
    const id = `state-${randomBytes(4).toString('hex')}`;
    const paths = statePaths('_migrate/', id);
    const { clusterId } = await source.status();
    const current = { id, etcdClusterId: clusterId, datacenter: 'dc1', mappingHash: 'h1' };
    expect(await ensureMeta(target, paths, current, '0.1.0', new Date())).toBe('new');
    expect(await ensureMeta(target, paths, current, '0.1.0', new Date())).toBe('match');
    expect((await readState<StateMeta>(target, paths.meta))?.etcdClusterId).toBe(clusterId);

    const otherCluster = await rejection(ensureMeta(target, paths, { ...current, etcdClusterId: '1234' }, '0.1.0', new Date()));
    expect(otherCluster.exitCode).toBe(4);
    expect(otherCluster.code).toBe('identity_cluster_mismatch');

    await target.putKey(paths.meta, Buffer.from(JSON.stringify({ schemaVersion: 99, id })));
    const newer = await rejection(ensureMeta(target, paths, current, '0.1.0', new Date()));
    expect(newer.exitCode).toBe(2);
    expect(newer.code).toBe('state_schema_newer');
  });
});
