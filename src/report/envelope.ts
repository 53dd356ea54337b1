/**
 * The JSON document every command prints with `--format json` (DESIGN §4):
 * one document on stdout, with the schema `version` first.
 */
export const REPORT_VERSION = 1;

export type EnvelopeStatus = 'ok' | 'findings' | 'drift' | 'unverified' | 'error' | 'refused' | 'interrupted';

export function renderEnvelope(command: string, status: EnvelopeStatus, payload: Record<string, unknown>): string {
  return `${JSON.stringify({ version: REPORT_VERSION, command, status, ...payload }, null, 2)}\n`;
}
