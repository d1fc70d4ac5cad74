//! Functions compiled for several instruction sets and chosen at run time by what the CPU has.
//!
//! [`dispatch!`] turns an `#[inline(always)]` function into one that runs it compiled for AVX-512
//! (F, BW and VL), for AVX2, or for the baseline. The feature lists are written once, here: each
//! variant is compiled with `#[target_feature]` for a list and called, in an `unsafe` block, only
//! after that same list was detected, which is what makes the call sound. The variants compute
//! the same thing (the loops only vectorise wider; no FMA is enabled, so results are identical).

/// Defines `fn NAME(ARGS) -> RET` running `BODY(ARGS)` (an `#[inline(always)]` function taking
/// the same arguments) compiled for the best of `levels: avx512` (AVX-512 F+BW+VL, then AVX2) or
/// `levels: avx2` (AVX2) the CPU has, else for the baseline.
///
/// ```text
/// dispatch! {
///     /// `acc[i] += w * x[i]`.
///     pub fn accumulate(bytes: &[u8], w: f64, acc: &mut [f64]) = accumulate_any; levels: avx512
/// }
/// ```
macro_rules! dispatch {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path;
     levels: avx512) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: `avx512` is compiled for exactly the features detected just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: `avx2` is compiled for exactly the feature detected just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path;
     levels: avx2) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: `avx2` is compiled for exactly the feature detected just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
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

    #[test]
    fn every_level_computes_what_the_baseline_computes() {
        let xs: Vec<f64> = (0..1000).map(|i| (i as f64).sin()).collect();
        assert_eq!(sum(&xs, 0.5).to_bits(), sum_any(&xs, 0.5).to_bits());
        assert_eq!(sum2(&xs, 0.5).to_bits(), sum_any(&xs, 0.5).to_bits());
    }
}
