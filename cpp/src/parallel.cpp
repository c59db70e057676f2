#include "maskid/parallel.hpp"

#include <unistd.h>

#include <algorithm>

namespace maskid {

ThreadPool::ThreadPool(unsigned num_workers) {
  workers_.reserve(num_workers);
  for (unsigned i = 0; i < num_workers; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

ThreadPool& ThreadPool::global() {
  // Leaked on purpose: joining threads during static destruction can deadlock at interpreter exit.
  // A forked child (multiprocessing) inherits the object but not the threads: it gets a new pool.
  static std::mutex mutex;
  static ThreadPool* pool = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(mutex);
  if (pool == nullptr || owner != getpid()) {
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    pool = new ThreadPool(hw - 1);
    owner = getpid();
  }
  return *pool;
}

void ThreadPool::run_job(Job& job) {
  for (;;) {
    if (job.failed.load(std::memory_order_relaxed)) return;
    const int64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job.end) return;
    try {
      (*job.fn)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(job.error_mutex);
      if (!job.error) job.error = std::current_exception();
      job.failed.store(true, std::memory_order_relaxed);
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stop_ || (generation_ != seen && job_ && joined_ < wanted_); });
    if (stop_) return;
    seen = generation_;
    Job* job = job_;
    ++joined_;
    ++active_;
    lock.unlock();
    run_job(*job);
    lock.lock();
    if (--active_ == 0) done_.notify_all();
  }
}

void ThreadPool::parallel_for(int64_t begin, int64_t end, unsigned threads,
                              const std::function<void(int64_t)>& fn) {
  if (end <= begin) return;
  const int64_t count = end - begin;
  unsigned helpers = threads == 0 ? size() : std::min(threads - 1, size());
  helpers = static_cast<unsigned>(std::min<int64_t>(helpers, count - 1));

  const std::function<void(int64_t)> shifted = [&](int64_t i) { fn(begin + i); };
  Job job;
  job.fn = &shifted;
  job.end = count;
  if (helpers == 0) {
    run_job(job);
  } else {
    std::lock_guard<std::mutex> call(call_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      ++generation_;
      wanted_ = helpers;
      joined_ = 0;
    }
    wake_.notify_all();
    run_job(job);
    std::unique_lock<std::mutex> lock(mutex_);
    // Stop further helpers from joining, then wait for those that did.
    wanted_ = joined_;
    done_.wait(lock, [&] { return active_ == 0; });
    job_ = nullptr;
  }
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace maskid
