// swift-tools-version: 6.0
// Cairn: distributed LoRA fine-tuning for llama-family models. The module map is in Docs/ARCHITECTURE.md;
// dependencies point downward only: CLI → Coordinator/Worker → Training/Wire/Transport → Llama → Tokenizer →
// ModelFormats → TensorKernels → CBLAS, CKernels; ModelFormats, Wire, Dashboard and Transport → Support (no BLAS).
// Coordinator and Worker share only Wire.
import PackageDescription

let package = Package(
    name: "Cairn",
    products: [
        .executable(name: "cairn", targets: ["CairnCLI"]),
        .executable(name: "cairn-bench", targets: ["CairnBench"]),
        .executable(name: "cairn-fuzz", targets: ["CairnFuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // System libraries from Debian: libopenblas-dev (cblas + LAPACK) and libzmq3-dev.
        .systemLibrary(
            name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        // No pkgConfig for libzmq: zmq.h is in /usr/include, the module map links zmq, and Debian's libzmq.pc pulls
        // in krb5's `-isystem` flags, which SwiftPM refuses with a warning on every build.
        .systemLibrary(name: "CZeroMQ", path: "Sources/CZeroMQ", providers: [.apt(["libzmq3-dev"])]),

        // The elementwise inner loops in C: AVX2+FMA versions picked at run time, portable ones otherwise.
        .target(name: "CKernels", path: "Sources/CKernels"),
        .target(name: "TensorKernels", dependencies: ["CBLAS", "CKernels"]),
        // General utilities without BLAS: JSON, typed file errors, SHA-256 hashing, atomic files, the blob store.
        .target(name: "Support", dependencies: [.product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "ModelFormats", dependencies: ["Support", "TensorKernels"]),
        .target(name: "Tokenizer", dependencies: ["ModelFormats"]),
        .target(name: "Llama", dependencies: ["TensorKernels", "ModelFormats", "Tokenizer"]),
        .target(
            name: "Training",
            dependencies: [
                "TensorKernels", "ModelFormats", "Tokenizer", "Llama", .product(name: "Yams", package: "Yams"),
            ]),
        .target(name: "Adapters", dependencies: ["Llama", "TensorKernels", "ModelFormats"]),
        // The cluster protocol: pure (no sockets), and without BLAS.
        .target(name: "Wire", dependencies: ["Support"]),
        // A small read-only HTTP/1.1 server (POSIX sockets): the coordinator's dashboard, JSON API and /metrics.
        .target(name: "HTTP"),
        // The dashboard page (page.html, embedded in the binary), the report built from it, Prometheus text.
        .target(name: "Dashboard", dependencies: ["Support"], resources: [.embedInCode("page.html")]),
        .target(
            name: "Transport",
            dependencies: ["CZeroMQ", "Support", .product(name: "Crypto", package: "swift-crypto")]),
        .target(
            name: "Coordinator",
            dependencies: [
                "Wire", "Transport", "Training", "Adapters", "Llama", "Tokenizer", "ModelFormats", "TensorKernels",
                "HTTP", "Dashboard", .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .target(
            name: "Worker",
            dependencies: [
                "Wire", "Transport", "Training", "Llama", "Tokenizer", "ModelFormats", "TensorKernels",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "CairnCLI",
            dependencies: [
                "TensorKernels", "ModelFormats", "Tokenizer", "Llama", "Training", "Adapters", "Transport", "Wire",
                "Coordinator", "Dashboard",
                "Worker", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "CairnBench", dependencies: ["TensorKernels", "ModelFormats", "Llama", "Training", "Adapters"]),
        // Fuzzing: the parsers' entry points, and the driver (libFuzzer when built by Scripts/fuzz).
        .target(name: "FuzzTargets", dependencies: ["Wire", "ModelFormats", "Tokenizer", "Llama", "Training", "HTTP"]),
        .executableTarget(name: "CairnFuzz", dependencies: ["FuzzTargets"]),

        // Shared test helpers: fixture paths, tensor comparison with named tolerances, tiny models.
        .target(name: "TestSupport", dependencies: ["TensorKernels", "ModelFormats"], path: "Tests/TestSupport"),
        .testTarget(name: "TensorKernelsTests", dependencies: ["TensorKernels", "TestSupport"]),
        .testTarget(name: "ModelFormatsTests", dependencies: ["ModelFormats", "TestSupport"]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "ModelFormats", "TestSupport"]),
        .testTarget(name: "LlamaTests", dependencies: ["Llama", "Tokenizer", "ModelFormats", "TestSupport"]),
        .testTarget(
            name: "TrainingTests", dependencies: ["Training", "Llama", "Tokenizer", "ModelFormats", "TestSupport"]),
        .testTarget(name: "AdaptersTests", dependencies: ["Adapters", "Llama", "TensorKernels", "TestSupport"]),
        .testTarget(name: "WireTests", dependencies: ["Wire", "Support"]),
        .testTarget(name: "FuzzTests", dependencies: ["FuzzTargets", "Wire", "HTTP", "TestSupport"]),
        .testTarget(name: "TransportTests", dependencies: ["Transport", "Support"]),
        .testTarget(name: "HTTPTests", dependencies: ["HTTP", "TestSupport", "TensorKernels"]),
        .testTarget(name: "DashboardTests", dependencies: ["Dashboard", "ModelFormats", "TestSupport"]),
        .testTarget(
            name: "CoordinatorTests",
            dependencies: [
                "Coordinator", "Worker", "Transport", "Wire", "Training", "Llama", "ModelFormats", "TensorKernels",
                "TestSupport", .product(name: "Logging", package: "swift-log"),
            ]),
        // Real processes and real sockets on loopback: a coordinator and workers started from the built binary.
        .testTarget(
            name: "ClusterTests",
            dependencies: ["TestSupport", "ModelFormats", "Transport", "Wire", "TensorKernels", "Coordinator"]),
        // Runs the built `cairn` binary as a user would (tiny fixtures; the real model when CAIRN_REAL_MODEL is set).
        .testTarget(name: "CLITests", dependencies: ["TestSupport", "ModelFormats", "Llama", "TensorKernels"]),
        // Checks on the real model (SmolLM2-135M); enabled when CAIRN_REAL_MODEL names the GGUF file.
        .testTarget(
            name: "RealModelTests", dependencies: ["Llama", "Tokenizer", "ModelFormats", "Training", "TestSupport"]),
    ]
)
