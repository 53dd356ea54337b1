import { ServerError } from '../errors.js';

/**
 * The oldest Consul release the tool supports: the oldest one its test suite
 * runs against (64-op transactions, the `tls` stanza, `check-session` in txns).
 */
export const OLDEST_SUPPORTED_CONSUL = '1.13.0';

/** `[major, minor, patch]` of a Consul version string (`1.13.9`, `v1.22.2+ent`), or undefined. */
export function parseConsulVersion(version: string): [number, number, number] | undefined {
  const match = /^v?(\d+)\.(\d+)(?:\.(\d+))?/.exec(version.trim());
  return match ? [Number(match[1]), Number(match[2]), Number(match[3] ?? 0)] : undefined;
}

/**
 * The error for a Consul older than {@link OLDEST_SUPPORTED_CONSUL}, or
 * undefined when it is supported or its version is unknown (a token that may
 * not read /v1/agent/self: doctor warns about that separately).
 */
export function consulTooOld(address: string, version: string): ServerError | undefined {
  const have = parseConsulVersion(version);
  const oldest = parseConsulVersion(OLDEST_SUPPORTED_CONSUL)!;
  if (!have) return undefined;
  for (let i = 0; i < 3; i++) {
    if (have[i]! > oldest[i]!) return undefined;
    if (have[i]! < oldest[i]!) {
      return new ServerError('consul_too_old', `Consul at ${address} is version ${version}; the oldest version this tool supports is ${OLDEST_SUPPORTED_CONSUL}.`, {
        hint: `Upgrade the Consul servers to ${OLDEST_SUPPORTED_CONSUL} or newer before migrating.`,
        details: { version, oldestSupported: OLDEST_SUPPORTED_CONSUL },
      });
    }
  }
  return undefined;
}
