import { runSeqConformance } from '../../test/seq-conformance.js';

runSeqConformance({
  format: 'raw',
  variants: [{}],
  backing: false,
  knownLength: () => true,
  checkable: false,
});
