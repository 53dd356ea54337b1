import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { ServerError, UsageError } from '../errors.js';
import { resolveTargetLimits } from './limits.js';

const { config } = parseConfig('version: 1\nid: d\n', 'migration.yaml');
const failing = (err: Error) => ({ info: () => Promise.reject(err) });

describe('resolveTargetLimits', () => {
  it('a Consul that does not answer is no error: the audit judges by the pre-1.14 limit and says why', async () => {
    const limits = await resolveTargetLimits(config, failing(new ServerError('consul_unreachable', 'Consul at http://c:8500 is unreachable (ECONNREFUSED).')));
    expect(limits).toMatchObject({ txnMaxOps: 64, basis: expect.stringContaining('Consul could not be asked (Consul at http://c:8500 is unreachable') });
  });

  it('one that answers that the settings are wrong (a datacenter it does not know) is refused, as by every command', async () => {
    const unknown = new UsageError('datacenter_unknown', 'The Consul agent at http://c:8500 knows no datacenter dc9 (it knows dc1).');
    await expect(resolveTargetLimits(config, failing(unknown))).rejects.toMatchObject({ code: 'datacenter_unknown', exitCode: 2 });
  });
});
