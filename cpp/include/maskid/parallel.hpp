#pragma once
// A small persistent thread pool with a ParallelFor that rethrows the first worker exception on
// the calling thread (the hnswlib ParallelFor contract, without spawning threads on every call).
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace maskid {

class ThreadPool {
 public:
  explicit ThreadPool(unsigned num_workers);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // The process-wide pool, sized to the hardware minus the calling thread.
  static ThreadPool& global();

  unsigned size() const { return static_cast<unsigned>(workers_.size()); }

  // Calls fn(i) for every i in [begin, end) on up to `threads` threads (the caller included;
  // 0 = all). Blocks until done; the first exception thrown by fn is rethrown here.
  void parallel_for(int64_t begin, int64_t end, unsigned threads,
                    const std::function<void(int64_t)>& fn);

 private:
  struct Job {
    const std::function<void(int64_t)>* fn = nullptr;
    std::atomic<int64_t> next{0};
    int64_t end = 0;
    std::exception_ptr error;
    std::mutex error_mutex;
    std::atomic<bool> failed{false};
  };

  static void run_job(Job& job);
  void worker_loop();

  std::vector<std::thread> workers_;
  std::mutex mutex_;       // guards everything below and serialises parallel_for callers
  std::mutex call_mutex_;  // one job at a time
  std::condition_variable wake_;
  std::condition_variable done_;
  Job* job_ = nullptr;
  uint64_t generation_ = 0;
  unsigned wanted_ = 0;  // helpers to take part in the current job
  unsigned joined_ = 0;  // helpers that took part so far
  unsigned active_ = 0;  // helpers still working on the current job
  bool stop_ = false;
};

// Convenience wrapper over the global pool.
inline void parallel_for(int64_t begin, int64_t end, unsigned threads,
                         const std::function<void(int64_t)>& fn) {
  ThreadPool::global().parallel_for(begin, end, threads, fn);
}

}  // namespace maskid
