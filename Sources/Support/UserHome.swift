// UserHome: the user's home directory as Unix tools read it: $HOME when it is set, else the password database's
// entry. (Foundation's home directory on Linux ignores $HOME, so `HOME=/elsewhere cairn …` would still read and
// write under the login's home.)

import Foundation

/// Where per-user files live by default: the model cache, state, credentials.
public enum UserHome {
    public static var path: String {
        if let home = ProcessInfo.processInfo.environment["HOME"], !home.isEmpty { return home }
        return NSHomeDirectory()
    }
}
