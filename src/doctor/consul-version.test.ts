import { describe, expect, it } from 'vitest';
import { OLDEST_SUPPORTED_CONSUL, consulTooOld, parseConsulVersion } from './consul-version.js';

describe('the oldest supported Consul', () => {
  it('parses release strings', () => {
    expect(parseConsulVersion('1.13.9')).toEqual([1, 13, 9]);
    expect(parseConsulVersion('v1.22.2+ent')).toEqual([1, 22, 2]);
    expect(parseConsulVersion('unknown')).toBeUndefined();
  });

  it(`refuses releases before ${OLDEST_SUPPORTED_CONSUL} with exit 3, naming the oldest supported`, () => {
    for (const version of ['1.12.9', '1.9.17', '0.9.3']) {
      const err = consulTooOld('http://127.0.0.1:8500', version);
      expect(err?.code, version).toBe('consul_too_old');
      expect(err?.exitCode).toBe(3);
      expect(err?.message).toBe(`Consul at http://127.0.0.1:8500 is version ${version}; the oldest version this tool supports is ${OLDEST_SUPPORTED_CONSUL}.`);
    }
  });

  it('accepts the supported releases and an unknown version', () => {
    for (const version of ['1.13.0', '1.13.9', '1.22.2', '2.0.0', 'unknown', '']) expect(consulTooOld('x', version), version).toBeUndefined();
  });
});
