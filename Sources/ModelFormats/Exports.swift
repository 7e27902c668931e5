// ModelFormats re-exports Support (JSON, errors, hashing, atomic files, the blob store), which it builds on, so a
// module reading model files has the JSON and error types they come with.

@_exported import Support
