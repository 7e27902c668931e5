import Coordinator
import Testing

@Suite struct StepWorkTests {
    @Test func proportionalSplitSumsToTheCountAndFollowsTheWeights() {
        #expect(proportionalSplit(4, weights: [1, 1]) == [2, 2])
        #expect(
            proportionalSplit(10, weights: [3, 1]) == [8, 2] || proportionalSplit(10, weights: [3, 1]) == [7, 3])
        #expect(proportionalSplit(5, weights: [1, 1, 1]).reduce(0, +) == 5)
        #expect(proportionalSplit(3, weights: [0, 0]) == [2, 1], "no speeds known: even split")
        #expect(proportionalSplit(4, weights: [100, 0.001]) == [4, 0])
        #expect(proportionalSplit(0, weights: [1]) == [0])
        for n in 0..<50 {
            let w = (0..<(n % 5 + 1)).map { Double(($0 * 7 + n) % 11) }
            #expect(proportionalSplit(n, weights: w).reduce(0, +) == n)
        }
    }

    @Test func assignsEveryRowOnceAndCompletesWhenAllResultsAreIn() {
        var w = StepWork(rows: 6, firstAssignment: 100)
        let a = w.distribute(idle: [("a", 2), ("b", 1)], now: 0) { _, _ in 10 }
        #expect(a.map(\.rows) == [[0, 1, 2, 3], [4, 5]])
        #expect(a.map(\.id) == [100, 101] && a.allSatisfy { $0.deadline == 10 })
        #expect(w.pending.isEmpty && !w.isComplete)
        #expect(w.distribute(idle: [("a", 1)], now: 0) { _, _ in 10 }.isEmpty, "nothing left to hand out")
        #expect(w.complete(100, worker: "b") == nil, "a result from the wrong worker is refused")
        #expect(w.complete(100, worker: "a") != nil)
        #expect(w.complete(100, worker: "a") == nil, "a repeated result is never counted twice")
        #expect(w.complete(101, worker: "b") != nil)
        #expect(w.isComplete && w.completedRows == ["a": 4, "b": 2])
    }

    @Test func aLostWorkersRowsGoToTheOthersAndItsLateResultIsIgnored() {
        var w = StepWork(rows: 4, firstAssignment: 1)
        _ = w.distribute(idle: [("a", 1), ("b", 1)], now: 0) { _, _ in 10 }
        let lost = w.lose(worker: "a")
        #expect(lost.map(\.rows) == [[0, 1]] && w.pending == [0, 1])
        let again = w.distribute(idle: [("b", 1), ("c", 1)], now: 1) { _, _ in 10 }
        #expect(again.map(\.worker) == ["c"] && again[0].rows == [0, 1], "b is busy; c takes the rows")
        #expect(w.complete(lost[0].id, worker: "a") == nil, "the lost worker's late result is ignored")
        #expect(w.complete(again[0].id, worker: "c") != nil && w.complete(2, worker: "b") != nil)
        #expect(w.isComplete && w.completedRows == ["b": 2, "c": 2])
    }

    @Test func missedDeadlinesGiveRowsBack() {
        var w = StepWork(rows: 3, firstAssignment: 1)
        _ = w.distribute(idle: [("a", 1), ("b", 2)], now: 0) { id, _ in id == "a" ? 5 : 50 }
        #expect(w.expire(now: 4).isEmpty)
        let late = w.expire(now: 5)
        #expect(late.map(\.worker) == ["a"] && w.pending == late[0].rows)
        #expect(w.busyWorkers == ["b"])
    }
}
