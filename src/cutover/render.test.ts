import { describe, expect, it } from 'vitest';
import type { CutoverResult } from './cutover.js';
import { refusal, renderCutover } from './render.js';

const refused = (over: Partial<CutoverResult>): CutoverResult => ({ action: 'cutover', migration: 'demo', refused: true, checks: [], rules: [], etcdRevision: 7, checkpoint: 7, written: [], ...over });

describe('renderCutover', () => {
  it('a refusal in JSON carries an error, as every other refusal does: the failed checks, or the declined confirmation', () => {
    const failed = JSON.parse(renderCutover(refused({
      checks: [{ name: 'dual-run', ok: false, detail: 'the dual-run is not running' }, { name: 'catch-up', ok: true, detail: 'lag 0' }],
      rules: [{ rule: 'app', checks: [{ name: 'verify', ok: false, detail: 'no verify' }] } as CutoverResult['rules'][number]],
    }), 'json'));
    expect(failed).toMatchObject({ status: 'refused', error: { code: 'preconditions_failed', failed: ['dual-run', 'app: verify'], docs: 'README.md#error-preconditions_failed' } });
    expect(failed.error.message).toBe('cutover refused: 2 precondition(s) failed (dual-run, app: verify); nothing was changed.');
    const declined = JSON.parse(renderCutover(refused({ action: 'rollback' }), 'json'));
    expect(declined).toMatchObject({ status: 'refused', error: { code: 'not_confirmed', message: 'rollback was not confirmed; nothing was changed.' } });
    expect(JSON.parse(renderCutover({ ...refused({}), refused: false }, 'json')).error).toBeUndefined();
  });

  it('a refusal in text is its checks; its error, with code and next step, is the one stderr says (the command does)', () => {
    const checks = refused({ checks: [{ name: 'dual-run', ok: false, detail: 'the dual-run is not running' }] });
    const text = renderCutover(checks, 'text');
    expect(text).toContain('FAIL dual-run   the dual-run is not running');
    expect(text).not.toContain('error[');
    expect(refusal(checks)).toMatchObject({ code: 'preconditions_failed', message: 'cutover refused: 1 precondition(s) failed (dual-run); nothing was changed.', hint: expect.stringContaining('Each failed check says what to do') });
    expect(refusal(refused({ action: 'rollback' }))).toMatchObject({ code: 'not_confirmed', message: 'rollback was not confirmed; nothing was changed.' });
  });
});
