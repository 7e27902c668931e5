// Normalization: the Unicode normal form some tokenizers apply before splitting.

import Foundation

extension String {
    /// Unicode Normalization Form C.
    var nfc: String { precomposedStringWithCanonicalMapping }
}
