//! Functions compiled for several instruction sets and chosen at run time by what the CPU has.
//!
//! [`dispatch!`] turns an `#[inline(always)]` function into one that runs it compiled for AVX-512
//! (F, BW and VL), for AVX2, or for the baseline — optionally each with FMA. The feature lists
//! are written once, here: each variant is compiled with `#[target_feature(enable = LIST)]` and
//! called, in an `unsafe` block, only after [`detected`]`(LIST)` found every feature of that same
//! literal on the CPU (once per call site, then remembered), which is what makes the call sound.
//! The variants compute the same thing: the loops only vectorise wider, and where FMA is enabled
//! the body uses `mul_add`, which is exact (one rounding) with or without the instruction.

/// Whether the CPU has every feature of a `#[target_feature]` list such as
/// `"avx512f,avx512bw,avx512vl"`. A feature this function does not know counts as absent.
#[cfg(target_arch = "x86_64")]
pub fn detected(list: &str) -> bool {
    list.split(',').all(|f| match f.trim() {
        "avx2" => std::is_x86_feature_detected!("avx2"),
        "fma" => std::is_x86_feature_detected!("fma"),
        "avx512f" => std::is_x86_feature_detected!("avx512f"),
        "avx512bw" => std::is_x86_feature_detected!("avx512bw"),
        "avx512vl" => std::is_x86_feature_detected!("avx512vl"),
        _ => false,
    })
}

/// Defines `fn NAME(ARGS) -> RET` running `BODY(ARGS)` (an `#[inline(always)]` function taking
/// the same arguments) compiled for the best level the CPU has, else for the baseline:
/// `levels: avx512` (AVX-512 F+BW+VL, then AVX2), `levels: avx2`, or `levels: avx512_fma` (the
/// same two, each with FMA). An `unsafe fn` stays one: it runs BODY, an `unsafe fn` too, under
/// the caller's promise.
///
/// ```text
/// dispatch! {
///     /// `acc[i] += w * x[i]`.
///     pub fn accumulate(bytes: &[u8], w: f64, acc: &mut [f64]) = accumulate_any; levels: avx512
/// }
/// ```
macro_rules! dispatch {
    // `$(unsafe $($unsafe:lifetime)?)?` matches an optional `unsafe`: a repetition must hold a
    // metavariable to be repeated in the expansion, and the (never given) lifetime is that one.
    ($(#[$attr:meta])* $vis:vis $(unsafe $($unsafe:lifetime)?)? fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
     = $body:path; levels: avx512) => {
        $crate::simd::dispatch!(@emit [$(#[$attr])* $vis $(unsafe $($unsafe)?)? fn $name] ($($arg: $ty),*) ($($arg),*)
            ($($ret)?), $body; "avx512f,avx512bw,avx512vl", "avx2");
    };
    ($(#[$attr:meta])* $vis:vis $(unsafe $($unsafe:lifetime)?)? fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
     = $body:path; levels: avx512_fma) => {
        $crate::simd::dispatch!(@emit [$(#[$attr])* $vis $(unsafe $($unsafe)?)? fn $name] ($($arg: $ty),*) ($($arg),*)
            ($($ret)?), $body; "avx512f,avx512bw,avx512vl,fma", "avx2,fma");
    };
    ($(#[$attr:meta])* $vis:vis $(unsafe $($unsafe:lifetime)?)? fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
     = $body:path; levels: avx2) => {
        $crate::simd::dispatch!(@emit [$(#[$attr])* $vis $(unsafe $($unsafe)?)? fn $name] ($($arg: $ty),*) ($($arg),*)
            ($($ret)?), $body; "avx2");
    };
    // A safe function.
    (@emit [$(#[$attr:meta])* $vis:vis fn $name:ident] $params:tt $args:tt $ret:ty, $body:path; $($level:literal),+) => {
        $(#[$attr])*
        #[allow(unused_parens)] // the return type comes in parentheses: `()` where there is none
        $vis fn $name $params -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                $({
                    // Detected once per call site: the functions run in inner loops (a
                    // resampler's rows), where parsing the list each call cost ~40 ns.
                    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
                    if *DETECTED.get_or_init(|| $crate::simd::detected($level)) {
                        #[target_feature(enable = $level)]
                        #[allow(unused_parens)]
                        fn variant $params -> $ret {
                            $body $args
                        }
                        // SAFETY: `variant` is compiled for exactly the features detected just above.
                        return unsafe { variant $args };
                    }
                })+
            }
            $body $args
        }
    };
    // An `unsafe fn`, whose body is one too.
    (@emit [$(#[$attr:meta])* $vis:vis unsafe fn $name:ident] $params:tt $args:tt $ret:ty, $body:path; $($level:literal),+) => {
        $(#[$attr])*
        #[allow(unused_parens)] // the return type comes in parentheses: `()` where there is none
        $vis unsafe fn $name $params -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                $({
                    // Detected once per call site: the functions run in inner loops (a
                    // resampler's rows), where parsing the list each call cost ~40 ns.
                    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
                    if *DETECTED.get_or_init(|| $crate::simd::detected($level)) {
                        #[target_feature(enable = $level)]
                        #[allow(unused_parens)]
                        unsafe fn variant $params -> $ret {
                            // SAFETY: the promise the caller made to the function being defined.
                            unsafe { $body $args }
                        }
                        // SAFETY: `variant` is compiled for exactly the features detected just
                        // above, and the caller's promise is what `variant` needs.
                        return unsafe { variant $args };
                    }
                })+
            }
            // SAFETY: the promise the caller made to the function being defined.
            unsafe { $body $args }
        }
    };
}
pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    #[inline(always)]
    fn sum_any(xs: &[f64], scale: f64) -> f64 {
        xs.iter().map(|x| x * scale).sum()
    }

    dispatch! {
        /// Every variant computes the same.
        fn sum(xs: &[f64], scale: f64) -> f64 = sum_any; levels: avx512
    }

    dispatch! {
        fn sum2(xs: &[f64], scale: f64) -> f64 = sum_any; levels: avx2
    }

    dispatch! {
        fn sum_fma(xs: &[f64], scale: f64) -> f64 = sum_any; levels: avx512_fma
    }

    /// # Safety
    /// None needed: a safe body behind an `unsafe fn`, to compile that arm.
    #[inline(always)]
    unsafe fn sum_unsafe_any(xs: &[f64], scale: f64) -> f64 {
        sum_any(xs, scale)
    }

    dispatch! {
        /// # Safety
        /// As `sum_unsafe_any`.
        unsafe fn sum_unsafe(xs: &[f64], scale: f64) -> f64 = sum_unsafe_any; levels: avx512_fma
    }

    #[test]
    fn a_feature_list_is_detected_only_whole() {
        assert!(!super::detected("avx2,no-such-feature"));
        assert_eq!(super::detected("avx2"), std::is_x86_feature_detected!("avx2"));
    }

    #[test]
    fn every_level_computes_what_the_baseline_computes() {
        assert_eq!(sum_fma(&[1.0, 2.0], 0.5).to_bits(), 1.5f64.to_bits());
        // SAFETY: `sum_unsafe_any` needs nothing.
        assert_eq!(unsafe { sum_unsafe(&[1.0, 2.0], 0.5) }.to_bits(), 1.5f64.to_bits());
        let xs: Vec<f64> = (0..1000).map(|i| (i as f64).sin()).collect();
        assert_eq!(sum(&xs, 0.5).to_bits(), sum_any(&xs, 0.5).to_bits());
        assert_eq!(sum2(&xs, 0.5).to_bits(), sum_any(&xs, 0.5).to_bits());
    }
}
