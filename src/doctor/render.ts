import type { Format } from '../cli/context.js';
import { renderEnvelope } from '../report/envelope.js';
import type { DoctorResult } from './doctor.js';

const MARK = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL', skip: '--  ' } as const;

export function renderDoctor(result: DoctorResult, format: Format): string {
  if (format === 'json') return renderEnvelope('doctor', result.ok ? 'ok' : 'error', { etcd: result.etcd, consul: result.consul, configFile: result.configFile ?? null, checks: result.checks });
  const lines = result.checks.map((check) => {
    let line = `${MARK[check.status]}  ${check.name.padEnd(20)} ${check.message}`;
    if (check.code) line += ` [${check.code}]`;
    if (check.hint && check.status !== 'ok') line += `\n      next: ${check.hint}`;
    return line;
  });
  const failed = result.checks.filter((c) => c.status === 'fail').length;
  const warned = result.checks.filter((c) => c.status === 'warn').length;
  lines.push('', failed > 0 ? `${failed} check(s) failed, ${warned} warning(s).` : `All checks passed${warned ? ` with ${warned} warning(s)` : ''}.`);
  return `${lines.join('\n')}\n`;
}
